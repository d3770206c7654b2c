"""All-to-all with a fixed capacity: every rank sends every other rank a block of
``max_tokens_per_rank`` rows, token t in row t of the block for each rank that holds one of its
experts (the other rows carry no expert: ids -1), so the splits are known in advance. No counts
exchange, no host sync, no gather of rows to send (a whole EP forward captures in a CUDA graph:
tests_gpu/ep_graph_gpu.py), and each row travels with its token's expert ids and weights packed
behind it, so at decode sizes its latency is that of one fixed-size all-to-all each way.

Bytes per rank and step: W * capacity rows each way, whoever needs them; when W <= k nearly every
token goes to every rank anyway, so this is close to the counted all-to-all (all_to_all.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moekit.ep import fp8_dispatch
from moekit.ep.all_to_all import exchange_rows, split_messages
from moekit.ep.collectives import Collectives
from moekit.ep.placement import ExpertPlacement, route_pairs
from moekit.kernel.prepare_finalize import PreparedTokens, add_shared, weight_on_input


def packed_width(hidden: int, top_k: int, dtype: torch.dtype) -> int | None:
    """Elements of x's dtype per packed row (the row, then its message: 2k int32 words), or None
    where the words cannot sit on 4-byte boundaries of such a row (then two all-to-alls)."""
    size = dtype.itemsize
    if (8 * top_k) % size or (hidden * size) % 4:
        return None
    return hidden + 8 * top_k // size


@dataclass(frozen=True)
class PaddedPlan:
    num_tokens: int


class PaddedAllToAllPrepareFinalize:
    name = "all-to-all (fixed capacity)"

    def __init__(self, placement: ExpertPlacement, comm: Collectives, device, capacity: int,
                 fp8_dispatch: bool = False, pack_rows: bool = True):
        self.placement, self.comm, self.capacity, self.fp8_dispatch = placement, comm, capacity, fp8_dispatch
        self.pack_rows = pack_rows  # False: rows and messages in two all-to-alls (for comparison)
        self.tables = placement.tables(device)

    overlaps_shared = True  # prepare(..., overlap=shared) runs the shared experts during the dispatch

    def prepare(self, x, topk_weights, topk_ids, apply_router_weight_on_input: bool, overlap=None) -> PreparedTokens:
        num_tokens, top_k = topk_ids.shape
        if num_tokens > self.capacity:
            raise ValueError(f"{num_tokens} tokens on rank {self.comm.rank} exceed the expert-parallel capacity "
                             f"max_tokens_per_rank={self.capacity}")
        x, topk_weights = weight_on_input(x, topk_weights, apply_router_weight_on_input)
        world, cap, hidden = self.comm.world_size, self.capacity, x.shape[1]
        splits = [cap] * world
        if self.pack_rows and not self.fp8_dispatch and packed_width(hidden, top_k, x.dtype) is not None:
            return self._exchange_packed(x, topk_weights, topk_ids, splits, overlap, PaddedPlan(num_tokens))
        meta = self.messages(topk_ids, topk_weights, extra_columns=1 if self.fp8_dispatch else 0)
        dtype = x.dtype
        if self.fp8_dispatch:
            x, scale_bits = fp8_dispatch.encode(x)
            meta[:, :num_tokens, 2 * top_k:] = scale_bits.unsqueeze(0)
            meta[:, num_tokens:, 2 * top_k:] = 0
        rows = x.new_empty(world, cap, hidden)
        rows[:, :num_tokens] = x.unsqueeze(0)
        rows[:, num_tokens:] = 0  # (rows past the tokens carry no expert, but stay finite)
        meta = meta.reshape(world * cap, -1)
        return exchange_rows(self.comm, rows.reshape(world * cap, hidden), meta, splits, splits, top_k, dtype,
                             self.fp8_dispatch, overlap, PaddedPlan(num_tokens))

    def _exchange_packed(self, x, topk_weights, topk_ids, splits, overlap, plan) -> PreparedTokens:
        """Rows and messages in one all-to-all: each row carries its token's message after it."""
        hidden, top_k = x.shape[1], topk_ids.shape[1]
        packed = self.packed_messages(x, topk_ids, topk_weights).reshape(sum(splits), -1)
        received = torch.empty_like(packed)
        wait = self.comm.start_all_to_all(received, packed, splits, splits,
                                          "dispatch of token rows and their expert ids")
        overlapped = overlap() if overlap is not None else None
        wait()
        if received.is_cuda:
            from moekit.triton_ops.dispatch_meta import unpack_messages

            ids, weights = unpack_messages(received, hidden, top_k)
        else:
            ids, weights = split_messages(received[:, hidden:].view(torch.int32), top_k)
        # (the rows stay a strided view: the experts read them in place)
        return PreparedTokens(x=received[:, :hidden], topk_weights=weights, topk_ids=ids, plan=plan,
                              overlapped=overlapped)

    def packed_messages(self, x, topk_ids, topk_weights) -> torch.Tensor:
        """[W, capacity, packed_width] in x's dtype: row t of each destination's block is token t's
        row (zeros past the tokens) followed by its message (``messages``) as 2k int32 words. On GPUs
        one Triton launch, elsewhere the same in PyTorch."""
        world, cap, num_tokens, hidden = self.comm.world_size, self.capacity, x.shape[0], x.shape[1]
        width = packed_width(hidden, topk_ids.shape[1], x.dtype)
        if x.is_cuda:
            from moekit.triton_ops.dispatch_meta import dispatch_packed

            return dispatch_packed(x, topk_ids, topk_weights, self.tables, world, cap, width)
        packed = x.new_zeros(world, cap, width)
        packed[:, :num_tokens, :hidden] = x.unsqueeze(0)
        packed[:, :, hidden:] = self.messages(topk_ids, topk_weights).view(x.dtype)
        return packed

    def messages(self, topk_ids, topk_weights, extra_columns: int = 0) -> torch.Tensor:
        """[W, capacity, 2k + extra_columns] int32: for each destination's row t, token t's expert ids
        local to that rank (-1: served elsewhere, or no token) and its weights as bits (0 where -1).
        On GPUs one Triton launch (triton_ops/dispatch_meta.py), elsewhere the same in PyTorch."""
        world, cap = self.comm.world_size, self.capacity
        if topk_ids.is_cuda:
            from moekit.triton_ops.dispatch_meta import dispatch_meta

            return dispatch_meta(topk_ids, topk_weights, self.tables, world, cap, extra_columns)
        num_tokens, top_k = topk_ids.shape
        routes = route_pairs(topk_ids, self.tables)
        dest = torch.arange(world, device=topk_ids.device).view(world, 1, 1)
        mine = routes.rank.unsqueeze(0) == dest  # [W, T, k]: pairs served by each destination
        meta = torch.zeros(world, cap, 2 * top_k + extra_columns, dtype=torch.int32, device=topk_ids.device)
        meta[:, :, :top_k] = -1
        meta[:, :num_tokens, :top_k] = torch.where(mine, routes.local.unsqueeze(0), -1).to(torch.int32)
        weights = torch.where(mine, topk_weights.float().unsqueeze(0), 0.0)
        meta[:, :num_tokens, top_k:2 * top_k] = weights.view(torch.int32)
        return meta

    def finalize(self, expert_out, shared_out, out_dtype, prepared: PreparedTokens) -> torch.Tensor:
        world, cap = self.comm.world_size, self.capacity
        back = torch.empty_like(expert_out)
        splits = [cap] * world
        self.comm.all_to_all(back, expert_out.contiguous(), splits, splits, "combine of expert outputs")
        back = back.reshape(world, cap, -1)
        if back.is_cuda:  # one pass (triton_ops/rank_combine.py), the same sums
            from moekit.triton_ops.rank_combine import sum_rank_blocks

            return sum_rank_blocks(back, prepared.plan.num_tokens, shared_out, out_dtype)
        return add_shared(back[:, : prepared.plan.num_tokens].float().sum(0), shared_out, out_dtype)
