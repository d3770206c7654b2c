"""All-to-all prepare/finalize: each token travels once to every rank that holds one of its experts
(with the expert ids local to that rank, and the routing weights of those experts only), the local
experts run on what arrived, and the weighted partial sums travel back and are added in token order.

Bytes per rank and step: the token rows that leave it (at most T * min(k, W) rows of H) and the
same coming back, plus k ids and k weights per row. The row counts are exchanged first and read on
the host (a sync): this path is not CUDA-graph capturable."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moekit.ep import fp8_dispatch
from moekit.ep.collectives import Collectives
from moekit.ep.placement import ExpertPlacement, route_pairs
from moekit.kernel.prepare_finalize import PreparedTokens, add_shared, weight_on_input


@dataclass(frozen=True)
class DispatchPlan:
    send_rows: torch.Tensor  # [S] the token of each row sent, grouped by destination rank
    send_counts: list[int]  # rows sent to each rank
    recv_counts: list[int]  # rows received from each rank
    num_tokens: int


class AllToAllPrepareFinalize:
    name = "all-to-all"

    def __init__(self, placement: ExpertPlacement, comm: Collectives, device, fp8_dispatch: bool = False):
        self.placement, self.comm, self.fp8_dispatch = placement, comm, fp8_dispatch
        self.tables = placement.tables(device)

    overlaps_shared = True  # prepare(..., overlap=shared) runs the shared experts during the dispatch

    def prepare(self, x, topk_weights, topk_ids, apply_router_weight_on_input: bool, overlap=None) -> PreparedTokens:
        x, topk_weights = weight_on_input(x, topk_weights, apply_router_weight_on_input)
        num_tokens, top_k = topk_ids.shape
        routes = route_pairs(topk_ids, self.tables)
        wanted = torch.zeros(num_tokens, self.comm.world_size, dtype=torch.bool, device=x.device)
        wanted.scatter_(1, routes.rank, True)  # token t goes to rank d once, whatever its experts there
        dest, rows = wanted.t().nonzero(as_tuple=True)  # by destination, then token
        send_counts = wanted.sum(0)
        mine = routes.rank[rows] == dest.unsqueeze(1)  # [S, k]: the pairs this copy serves
        send_ids = torch.where(mine, routes.local[rows], -1).to(torch.int32)
        send_weights = torch.where(mine, topk_weights[rows].float(), 0.0)
        recv_counts = self.comm.exchange_counts(send_counts)
        send_list = send_counts.tolist()
        payload, extra = x[rows].contiguous(), []
        if self.fp8_dispatch:
            payload, scale_bits = fp8_dispatch.encode(payload)
            extra = [scale_bits]
        meta = torch.cat([send_ids, send_weights.view(torch.int32), *extra], dim=1)
        return exchange_rows(self.comm, payload, meta, recv_counts, send_list, top_k, x.dtype, self.fp8_dispatch,
                             overlap, DispatchPlan(rows, send_list, recv_counts, num_tokens))

    def finalize(self, expert_out, shared_out, out_dtype, prepared: PreparedTokens) -> torch.Tensor:
        plan: DispatchPlan = prepared.plan
        back = expert_out.new_empty(plan.send_rows.numel(), expert_out.shape[1])
        self.comm.all_to_all(back, expert_out.contiguous(), plan.send_counts, plan.recv_counts,
                             "combine of expert outputs")
        out = torch.zeros(plan.num_tokens, expert_out.shape[1], dtype=torch.float32, device=expert_out.device)
        out.index_add_(0, plan.send_rows, back.float())
        return add_shared(out, shared_out, out_dtype)


def exchange_rows(comm: Collectives, payload: torch.Tensor, meta: torch.Tensor, recv_counts: list[int],
                  send_counts: list[int], top_k: int, dtype: torch.dtype, fp8: bool, overlap, plan) -> PreparedTokens:
    """The dispatch both all-to-all forms share: token rows (``payload``, fp8 bytes with ``fp8``) and
    one int32 message per row (``meta``: k local ids, k weights as bits, then the fp8 row scale), with
    ``overlap()`` (the shared experts) run while they travel."""
    received = sum(recv_counts)
    recv_x = payload.new_empty(received, payload.shape[1])
    recv_meta = meta.new_empty(received, meta.shape[1])
    wait_x = comm.start_all_to_all(recv_x, payload, recv_counts, send_counts, "dispatch of token rows")
    wait_meta = comm.start_all_to_all(recv_meta, meta, recv_counts, send_counts, "dispatch of expert ids and weights")
    overlapped = overlap() if overlap is not None else None
    wait_x()
    wait_meta()
    if fp8:
        recv_x = fp8_dispatch.decode(recv_x, recv_meta[:, 2 * top_k:], dtype)
    ids, weights = split_messages(recv_meta, top_k)
    return PreparedTokens(x=recv_x, topk_weights=weights, topk_ids=ids, plan=plan, overlapped=overlapped)


def split_messages(words: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Received messages [R, >= 2k] int32 -> (local ids [R, k] int32, weights [R, k] fp32), contiguous."""
    return words[:, :top_k].contiguous(), words[:, top_k:2 * top_k].contiguous().view(torch.float32)
