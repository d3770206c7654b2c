"""The collectives expert parallelism uses. On gloo (CPU) each is waited on with the layer's timeout:
a rank that died or never entered the layer's forward gives the others an error naming the step,
not a hang. On NCCL the wait is stream-ordered and the process group's timeout applies (its
watchdog aborts a collective that a dead rank never joins)."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


# torch 2.13 renamed the tensor forms (the old names warn); torch 2.11 has only the old ones
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class ExpertParallelError(RuntimeError):
    """A collective of an expert-parallel layer failed or timed out."""


class Collectives:
    def __init__(self, group, timeout_s: float):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("expert parallelism needs torch.distributed initialized first "
                               "(torch.distributed.init_process_group, e.g. under torchrun)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.timeout = datetime.timedelta(seconds=timeout_s)

    def _wait(self, work, what: str) -> None:
        if self.backend == "nccl":
            # stream-ordered: no host wait. A dead peer is caught by the process group's own watchdog
            # (init_process_group(timeout=...)); waiting here with a timeout polls the host and cost
            # ~1 ms per collective on an H200 pair.
            work.wait()
            return
        try:
            completed = work.wait(timeout=self.timeout)
        except Exception as e:  # gloo / NCCL report a dead peer or the timeout as various errors
            raise ExpertParallelError(
                f"expert-parallel {what} on rank {self.rank} of {self.world_size} ({self.backend}) failed or did not "
                f"complete within {self.timeout.total_seconds():g} s: a peer rank may have died or not entered this "
                f"layer's forward ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
        if completed is False:
            raise ExpertParallelError(f"expert-parallel {what} on rank {self.rank} timed out after "
                                      f"{self.timeout.total_seconds():g} s")

    def all_to_all(self, out: torch.Tensor, inp: torch.Tensor, out_splits: list[int], in_splits: list[int],
                   what: str) -> None:
        self.start_all_to_all(out, inp, out_splits, in_splits, what)()

    def start_all_to_all(self, out: torch.Tensor, inp: torch.Tensor, out_splits: list[int], in_splits: list[int],
                         what: str):
        """Issue the all-to-all and return its wait (call it before reading ``out``): work placed
        between the two overlaps the transfer."""
        work = dist.all_to_all_single(out, inp, out_splits, in_splits, group=self.group, async_op=True)
        return lambda: self._wait(work, what)

    def all_gather(self, out: torch.Tensor, inp: torch.Tensor, what: str) -> None:
        self._wait(_ALL_GATHER(out, inp, group=self.group, async_op=True), what)

    def reduce_scatter_sum(self, out: torch.Tensor, inp: torch.Tensor, what: str) -> None:
        self._wait(_REDUCE_SCATTER(out, inp, op=dist.ReduceOp.SUM, group=self.group, async_op=True), what)

    def all_reduce_sum(self, t: torch.Tensor, what: str) -> None:
        self._wait(dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group, async_op=True), what)

    def max_over_ranks(self, value: int, device) -> int:
        """The largest of every rank's ``value`` (host)."""
        t = torch.tensor([value], dtype=torch.int64, device=device)
        self._wait(dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True),
                   "all-reduce of chunk counts")
        return int(t.item())

    def exchange_counts(self, send_counts: torch.Tensor) -> list[int]:
        """send_counts [W] (rows this rank sends to each rank) -> rows it receives from each (host)."""
        recv = torch.empty_like(send_counts)
        self.all_to_all(recv, send_counts, [1] * self.world_size, [1] * self.world_size, "exchange of row counts")
        return recv.tolist()

    def gather_counts(self, count: int, device) -> list[int]:
        """Every rank's token count (host)."""
        counts = torch.empty(self.world_size, dtype=torch.int64, device=device)
        self.all_gather(counts, torch.tensor([count], dtype=torch.int64, device=device), "all-gather of token counts")
        return counts.tolist()
