"""Group the (token, slot) pairs of a batch by expert, on the device, with no host sync.

Pair p = token * top_k + slot. The output lists the pairs expert by expert, each expert's run padded
with the sentinel ``num_pairs`` up to a multiple of ``block_m``, so every block of ``block_m`` rows
belongs to one expert and the GEMMs can take one weight tile per block. Buffer sizes depend only on
the shapes (never on the ids), so the whole thing replays in a CUDA graph:

    rows  = num_pairs + min(num_experts, num_pairs) * (block_m - 1)   (at most block_m - 1 pad per hit expert)

Pairs whose id lies outside [0, E) are left out: they reach no GEMM and contribute nothing.

Two paths: one program does everything when the batch is small (decode: one launch), and three
launches (count, offsets, scatter) when it is large. A single token needs none (``pairs_in_place``):
its k pairs have k distinct experts, so block m can hold pair m alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moekit.triton_ops.launcher import cdiv, launch, next_pow2

SINGLE_PROGRAM_MAX_PAIRS = 4096  # above this the one-program path runs out of registers


@dataclass(frozen=True)
class AlignedPairs:
    sorted_pairs: torch.Tensor  # [rows] int32: pair index per padded row, num_pairs for padding
    block_expert: torch.Tensor  # [rows / block_m] int32: the expert of each block (valid below num_rows)
    num_rows: torch.Tensor  # [1] int32: padded rows in use; blocks at or past it are idle
    block_m: int
    # In place (one token): block m holds pair m in its first row, the rest padding; block_expert is
    # the ids themselves (the kernels skip a block whose id is out of range), the other two unused.
    in_place: bool = False

    @property
    def rows(self) -> int:
        """Padded rows (the GEMMs' M extent): blocks x block_m."""
        return self.block_expert.numel() * self.block_m if self.in_place else self.sorted_pairs.numel()


def max_padded_rows(num_pairs: int, num_experts: int, block_m: int) -> int:
    rows = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    return cdiv(rows, block_m) * block_m


@triton.jit
def _align_one_program(ids_ptr, counter_ptr, sorted_ptr, block_expert_ptr, num_rows_ptr,
                       num_pairs, num_experts,
                       BLOCK_PAIRS: tl.constexpr, BLOCK_EXPERTS: tl.constexpr, BLOCK_M: tl.constexpr):
    pairs = tl.arange(0, BLOCK_PAIRS)
    experts = tl.arange(0, BLOCK_EXPERTS)
    ids = tl.load(ids_ptr + pairs, mask=pairs < num_pairs, other=-1)
    valid = (ids >= 0) & (ids < num_experts) & (pairs < num_pairs)
    # Invalid pairs fall in the spare bin num_experts; int32 after the range check (ids may be int64).
    ids = tl.where(valid, ids, num_experts).to(tl.int32)
    counts = tl.histogram(ids, BLOCK_EXPERTS)
    counts = tl.where(experts < num_experts, counts, 0)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, 0)
    starts = ends - padded
    tl.store(counter_ptr + experts, starts, mask=experts <= num_experts)  # each expert's next free row
    tl.store(num_rows_ptr, tl.sum(padded, 0))
    # Padding: rows [start + count, start + padded) of each expert hold the sentinel.
    for j in range(BLOCK_M - 1):
        tl.store(sorted_ptr + starts + counts + j, num_pairs, mask=counts + j < padded)
    tl.debug_barrier()  # counters written above are read by the atomics below
    row = tl.atomic_add(counter_ptr + ids, 1, mask=valid)
    tl.store(sorted_ptr + row, pairs, mask=valid)
    # The first row of every block names the block's expert (padding-only blocks do not exist).
    tl.store(block_expert_ptr + row // BLOCK_M, ids, mask=valid & (row % BLOCK_M == 0))


@triton.jit
def _count(ids_ptr, counts_ptr, rank_ptr, num_pairs, num_experts, BLOCK: tl.constexpr):
    pairs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + pairs, mask=pairs < num_pairs, other=-1)
    valid = (ids >= 0) & (ids < num_experts) & (pairs < num_pairs)
    rank = tl.atomic_add(counts_ptr + ids, 1, mask=valid)  # this pair's place among its expert's pairs
    tl.store(rank_ptr + pairs, rank, mask=pairs < num_pairs)


@triton.jit
def _offsets(counts_ptr, starts_ptr, sorted_ptr, num_rows_ptr, num_pairs, num_experts,
             BLOCK_EXPERTS: tl.constexpr, BLOCK_M: tl.constexpr):
    experts = tl.arange(0, BLOCK_EXPERTS)
    counts = tl.load(counts_ptr + experts, mask=experts < num_experts, other=0)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    starts = tl.cumsum(padded, 0) - padded
    tl.store(starts_ptr + experts, starts, mask=experts < num_experts)
    tl.store(num_rows_ptr, tl.sum(padded, 0))
    for j in range(BLOCK_M - 1):
        tl.store(sorted_ptr + starts + counts + j, num_pairs, mask=(counts + j < padded) & (experts < num_experts))


@triton.jit
def _scatter(ids_ptr, rank_ptr, starts_ptr, sorted_ptr, block_expert_ptr, num_pairs, num_experts,
             BLOCK: tl.constexpr, BLOCK_M: tl.constexpr):
    pairs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + pairs, mask=pairs < num_pairs, other=-1)
    valid = (ids >= 0) & (ids < num_experts) & (pairs < num_pairs)
    row = tl.load(starts_ptr + ids, mask=valid, other=0) + tl.load(rank_ptr + pairs, mask=valid, other=0)
    tl.store(sorted_ptr + row, pairs, mask=valid)
    tl.store(block_expert_ptr + row // BLOCK_M, ids, mask=valid & (row % BLOCK_M == 0))


def pairs_in_place(topk_ids: torch.Tensor, block_m: int) -> AlignedPairs:
    """One token's pairs as blocks of their own, with no launch (see the module docstring)."""
    ids = topk_ids.reshape(-1)
    return AlignedPairs(ids, ids, ids, block_m, in_place=True)


def align_pairs_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                          single_program_max_pairs: int = SINGLE_PROGRAM_MAX_PAIRS) -> AlignedPairs:
    """topk_ids [T, k] int32/int64 (contiguous) -> the expert-grouped, block-padded pair order."""
    ids = topk_ids.reshape(-1)
    num_pairs = ids.numel()
    rows = max_padded_rows(num_pairs, num_experts, block_m)
    dev = ids.device
    sorted_pairs = torch.empty(rows, dtype=torch.int32, device=dev)
    block_expert = torch.empty(max(rows // block_m, 1), dtype=torch.int32, device=dev)
    num_rows = torch.empty(1, dtype=torch.int32, device=dev)
    block_experts = next_pow2(num_experts + 1)  # + the spare bin for invalid ids
    if num_pairs <= single_program_max_pairs and block_experts <= 8192:
        counter = torch.empty(num_experts + 1, dtype=torch.int32, device=dev)
        launch(_align_one_program, (1,),
               (ids, counter, sorted_pairs, block_expert, num_rows, num_pairs, num_experts),
               dict(BLOCK_PAIRS=next_pow2(max(num_pairs, 16)), BLOCK_EXPERTS=block_experts, BLOCK_M=block_m),
               8, 3)
    else:
        counts = torch.zeros(num_experts, dtype=torch.int32, device=dev)
        rank = torch.empty(num_pairs, dtype=torch.int32, device=dev)
        starts = torch.empty(num_experts, dtype=torch.int32, device=dev)
        block = 1024
        grid = (cdiv(num_pairs, block),)
        launch(_count, grid, (ids, counts, rank, num_pairs, num_experts), dict(BLOCK=block), 4, 3)
        launch(_offsets, (1,), (counts, starts, sorted_pairs, num_rows, num_pairs, num_experts),
               dict(BLOCK_EXPERTS=next_pow2(num_experts), BLOCK_M=block_m), 8, 3)
        launch(_scatter, grid, (ids, rank, starts, sorted_pairs, block_expert, num_pairs, num_experts),
               dict(BLOCK=block, BLOCK_M=block_m), 4, 3)
    return AlignedPairs(sorted_pairs, block_expert, num_rows, block_m)
