"""The fixed-capacity all-to-all's messages (ep/all_to_all_padded.py) in one launch: for every
destination rank and every row of its block, the k expert ids local to that rank (-1 for a pair
served elsewhere, a row past the tokens, or an id outside the placement) and the k routing weights
(0 where the id is -1), as int32 bits. PyTorch took ~14 small kernels for this (route each pair to a
replica, compare with each destination, fill, select, cast, concatenate), most of a decode step's
dispatch time outside the transfers. Pairs pick a logical expert's replica as ``route_pairs`` does:
replica ``token % replicas[id]``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.triton_ops.launcher import cdiv, launch, next_pow2


@triton.jit
def _dispatch_meta(ids_ptr, weights_ptr, replica_rank_ptr, replica_local_ptr, replicas_ptr, meta_ptr,
                   num_tokens, capacity, top_k, num_experts, max_replicas, meta_width,
                   BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    dest = tl.program_id(1)
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    slots = tl.arange(0, BLOCK_K)
    pair = tokens[:, None] * top_k + slots[None, :]
    live = (tokens < num_tokens)[:, None] & (slots < top_k)[None, :]
    ids = tl.load(ids_ptr + pair, mask=live, other=-1).to(tl.int64)
    ok = live & (ids >= 0) & (ids < num_experts)
    replica = tokens[:, None] % tl.load(replicas_ptr + ids, mask=ok, other=1)
    where = ids * max_replicas + replica
    rank = tl.load(replica_rank_ptr + where, mask=ok, other=-1)
    mine = ok & (rank == dest)
    local = tl.load(replica_local_ptr + where, mask=mine, other=-1)
    weight = tl.load(weights_ptr + pair, mask=mine, other=0.0).to(tl.float32)
    row = (dest * capacity + tokens).to(tl.int64)[:, None] * meta_width
    store = (tokens < capacity)[:, None] & (slots < top_k)[None, :]
    tl.store(meta_ptr + row + slots[None, :], local.to(tl.int32), mask=store)
    tl.store(meta_ptr + row + top_k + slots[None, :], weight.to(tl.int32, bitcast=True), mask=store)


def dispatch_meta(topk_ids: torch.Tensor, topk_weights: torch.Tensor, tables, world_size: int, capacity: int,
                  extra_columns: int = 0) -> torch.Tensor:
    """[world_size, capacity, 2k + extra_columns] int32: local ids, then weights as bits (the extra
    columns left for the caller)."""
    num_tokens, top_k = topk_ids.shape
    replica_rank, replica_local, replicas = tables
    meta = torch.empty(world_size, capacity, 2 * top_k + extra_columns, dtype=torch.int32, device=topk_ids.device)
    block_t = 64
    launch(_dispatch_meta, (cdiv(capacity, block_t), world_size),
           (topk_ids.contiguous(), topk_weights.contiguous(), replica_rank, replica_local, replicas, meta, num_tokens,
            capacity, top_k, replicas.numel(), replica_rank.shape[1], meta.shape[2]),
           dict(BLOCK_T=block_t, BLOCK_K=next_pow2(top_k)), 4, 1)
    return meta
