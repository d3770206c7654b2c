"""The fixed-capacity all-to-all's messages (ep/all_to_all_padded.py) in one launch: for every
destination rank and every row of its block, the k expert ids local to that rank (-1 for a pair
served elsewhere, a row past the tokens, or an id outside the placement) and the k routing weights
(0 where the id is -1), as int32 bits. PyTorch took ~14 small kernels for this (route each pair to a
replica, compare with each destination, fill, select, cast, concatenate), most of a decode step's
dispatch time outside the transfers. Pairs pick a logical expert's replica as ``route_pairs`` does:
replica ``token % replicas[id]``.

``dispatch_packed`` also copies each token's row in front of its message (zeros past the tokens), so
the rows and their ids travel in one all-to-all: ``[W, capacity, H + 8k / itemsize]`` in x's dtype."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.triton_ops.launcher import cdiv, launch, next_pow2


@triton.jit
def _dispatch_messages(x_ptr, ids_ptr, weights_ptr, replica_rank_ptr, replica_local_ptr, replicas_ptr, out_ptr,
                       words_ptr, num_tokens, capacity, top_k, num_experts, max_replicas, hidden, stride_x,
                       row_elems, row_words, meta_word0,
                       BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
                       COPY_ROWS: tl.constexpr):
    dest = tl.program_id(1)
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row = (dest * capacity + tokens).to(tl.int64)
    in_block = tokens < capacity
    if tl.program_id(2) == 0:  # the messages (the row copy is spread over axis 2)
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
        meta = words_ptr + row[:, None] * row_words + meta_word0 + slots[None, :]
        store = in_block[:, None] & (slots < top_k)[None, :]
        tl.store(meta, local.to(tl.int32), mask=store)
        tl.store(meta + top_k, weight.to(tl.int32, bitcast=True), mask=store)
    if COPY_ROWS:  # one [BLOCK_T, BLOCK_H] tile of the rows per program: decode copies in parallel
        cols = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
        col_ok = (cols < hidden)[None, :]
        values = tl.load(x_ptr + tokens.to(tl.int64)[:, None] * stride_x + cols[None, :],
                         mask=(tokens < num_tokens)[:, None] & col_ok, other=0.0)
        tl.store(out_ptr + row[:, None] * row_elems + cols[None, :], values, mask=in_block[:, None] & col_ok)


def _launch(x, topk_ids, topk_weights, tables, world_size, capacity, out, words, row_elems, meta_word0, copy_rows):
    num_tokens, top_k = topk_ids.shape
    replica_rank, replica_local, replicas = tables
    block_t, block_h = (16, 256) if copy_rows else (64, 1)
    hidden, stride_x = (x.shape[1], x.stride(0)) if copy_rows else (0, 0)
    launch(_dispatch_messages, (cdiv(capacity, block_t), world_size, cdiv(hidden, block_h) if copy_rows else 1),
           (x, topk_ids.contiguous(), topk_weights.contiguous(), replica_rank, replica_local, replicas, out, words,
            num_tokens, capacity, top_k, replicas.numel(), replica_rank.shape[1], hidden, stride_x,
            row_elems, words.shape[-1], meta_word0),
           dict(BLOCK_T=block_t, BLOCK_K=next_pow2(top_k), BLOCK_H=block_h, COPY_ROWS=copy_rows), 4, 1)


def dispatch_meta(topk_ids: torch.Tensor, topk_weights: torch.Tensor, tables, world_size: int, capacity: int,
                  extra_columns: int = 0) -> torch.Tensor:
    """[world_size, capacity, 2k + extra_columns] int32: local ids, then weights as bits (the extra
    columns left for the caller)."""
    top_k = topk_ids.shape[1]
    meta = torch.empty(world_size, capacity, 2 * top_k + extra_columns, dtype=torch.int32, device=topk_ids.device)
    _launch(meta, topk_ids, topk_weights, tables, world_size, capacity, meta, meta, 0, 0, False)
    return meta


def dispatch_packed(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, tables, world_size: int,
                    capacity: int, width: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """[world_size, capacity, width] in x's dtype: token t's row (zeros past the tokens), then its
    message as ``dispatch_meta`` builds it, as int32 words (``width`` leaves them 4-byte aligned:
    ep/all_to_all_padded.packed_width)."""
    hidden = x.shape[1]
    out = x.new_empty(world_size, capacity, width) if out is None else out
    words = out.view(torch.int32)
    _launch(x, topk_ids, topk_weights, tables, world_size, capacity, out, words, out.shape[-1],
            hidden * x.element_size() // 4, True)
    return out


@triton.jit
def _unpack_messages(words_ptr, ids_ptr, weights_ptr, rows, row_words, meta_word0, top_k,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    slots = tl.arange(0, BLOCK_K)
    ok = (r < rows)[:, None] & (slots < top_k)[None, :]
    src = words_ptr + r.to(tl.int64)[:, None] * row_words + meta_word0 + slots[None, :]
    dst = r.to(tl.int64)[:, None] * top_k + slots[None, :]
    tl.store(ids_ptr + dst, tl.load(src, mask=ok), mask=ok)
    tl.store(weights_ptr + dst, tl.load(src + top_k, mask=ok), mask=ok)


def unpack_messages(received: torch.Tensor, hidden: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Received packed rows [R, width] -> (ids [R, k] int32, weights [R, k] fp32), both contiguous,
    in one launch (two strided copies otherwise)."""
    words = received.view(torch.int32)
    rows = words.shape[0]
    ids = torch.empty(rows, top_k, dtype=torch.int32, device=received.device)
    weights = torch.empty(rows, top_k, dtype=torch.float32, device=received.device)
    block_r = 64
    launch(_unpack_messages, (cdiv(rows, block_r),),
           (words, ids, weights.view(torch.int32), rows, words.shape[1], hidden * received.element_size() // 4,
            top_k), dict(BLOCK_R=block_r, BLOCK_K=next_pow2(top_k)), 4, 1)
    return ids, weights
