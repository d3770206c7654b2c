"""The tile candidates ``moekit tune`` times: per row block (block_m), per GEMM, kept small enough
that a shape tunes in about a minute on a Hopper GPU, and filtered by shared memory."""

from __future__ import annotations

import itertools

from moekit.triton_ops.tile_configs import GemmTiles

SHARED_MEMORY_BYTES = 227 * 1024  # per block on Hopper


def block_m_candidates(num_tokens: int, top_k: int, num_experts: int) -> list[int]:
    """Row blocks worth trying: around the average rows per expert (padding costs rows, small
    blocks cost tensor-core efficiency)."""
    rows_per_expert = num_tokens * top_k / num_experts
    if rows_per_expert <= 8:
        return [16]
    if rows_per_expert <= 24:
        return [16, 32]
    if rows_per_expert <= 96:
        return [32, 64]
    if rows_per_expert <= 256:
        return [64, 128]
    return [128]


def gemm_candidates(block_m: int, gated: bool, elem_bytes: int = 2) -> list[GemmTiles]:
    """gemm1 (gated: two weight tiles per step) or gemm2 tiles for a row block."""
    if block_m <= 32:  # decode: stream weights, deep pipelines, N narrow enough to fill every SM
        space = itertools.product([16, 32, 64], [128, 256, 512], [1], [2, 4], [4, 6], [False])
    elif block_m == 64:
        space = itertools.product([64, 128], [64, 128], [8], [4, 8], [3, 4], [False, True])
    else:  # prefill: compute bound, big tiles; weights by TMA or by pointers
        space = itertools.product([64, 128, 256], [64, 128], [8], [4, 8], [3, 4], [False, True])
    tiles = [GemmTiles(*values) for values in space]
    b_tiles = 2 if gated else 1
    fits = [t for t in tiles
            if t.num_stages * (block_m * t.block_k + b_tiles * t.block_k * t.block_n) * elem_bytes
            <= SHARED_MEMORY_BYTES]
    # Two fp32 accumulators of block_m x block_n per program: keep them within the register file.
    return [t for t in fits if b_tiles * block_m * t.block_n // (32 * t.num_warps) <= 128]
