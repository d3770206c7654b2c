"""The tile candidates ``moekit tune`` times: per row block (block_m), per GEMM, kept small enough
that a shape tunes in about a minute on a Hopper GPU, and filtered by shared memory.

Quantized weights (``quant``) change the space: weight-only schemes on tensor cores try the swapped
loop's tiles (weight rows on wgmma's M side, K steps cut to one scale group by the kernel), and at
about a row per expert the decode GEMV's; the shared-memory filter counts the packed bytes; block_k
must tile the scheme's K groups; TMA is not tried (descriptors for packed codes are the kernel's
business, not the tuner's). w8a8 schemes with K-blocked scales
(fp8-block128) step K within one block (a longer step would be cut to it: a duplicate) and also try
block_n = the activation group, where gemm1 quantizes gemm2's input in its own epilogue."""

from __future__ import annotations

import itertools

from moekit.quant.spec import QuantSpec
from moekit.triton_ops.tile_configs import GEMV_MAX_BLOCK_M, GemmTiles

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


def gemm_candidates(block_m: int, gated: bool, elem_bytes: int = 2, quant: QuantSpec | None = None) -> list[GemmTiles]:
    """gemm1 (gated: two weight tiles per step) or gemm2 tiles for a row block; ``elem_bytes`` is the
    activations' element size (the weights' too unless ``quant`` is given)."""
    if quant is not None:
        return quantized_gemm_candidates(block_m, gated, elem_bytes, quant)
    # group_m 16: an expert past one row block (skewed routing, e.g. DeepSeek-V3's) reads its weight
    # tile again from L2 while the neighbouring blocks run (H200, 256 tokens: gemm1 6-8% faster)
    if block_m <= 32:  # decode: stream weights, deep pipelines, N narrow enough to fill every SM
        space = itertools.product([16, 32, 64], [128, 256, 512], [1, 16], [2, 4], [4, 6], [False])
    elif block_m == 64:
        space = itertools.product([64, 128], [64, 128], [8, 16], [4, 8], [3, 4], [False, True])
    else:  # prefill: compute bound, big tiles; weights by TMA or by pointers
        space = itertools.product([64, 128, 256], [64, 128], [8], [4, 8], [3, 4], [False, True])
    return _fitting([GemmTiles(*values) for values in space], block_m, gated, elem_bytes, elem_bytes)


def quantized_block_m_candidates(num_tokens: int, top_k: int, num_experts: int, gemv: bool) -> list[int]:
    """block_m_candidates, with the decode GEMV's row blocks of 1 and 2 (``gemv``: the scheme and
    shape run it) while experts get at most about two rows each. (Its 4-row blocks measured 1.5-3x
    slower than the tensor-core loop at 2-4 rows per expert on an H200: not tried.)"""
    rows_per_expert = num_tokens * top_k / num_experts
    small = [1, 2] if gemv and rows_per_expert <= 2 else []
    return small + block_m_candidates(num_tokens, top_k, num_experts)


def gemv_candidates(gated: bool) -> list[GemmTiles]:
    """The decode GEMV's tiles (weight_only_gemv.py): rows per program, codes per step, 4 warps,
    weights double-buffered in registers (num_stages 1), K split in 1, 2 or 4 parts (gemm2) or 1-2
    (gemm1, whose split adds a pass)."""
    splits = [1, 2] if gated else [1, 2, 4]
    return [GemmTiles(block_n, block_k, 1, 4, 1, split_k=split)
            for block_n, block_k, split in itertools.product([16, 32, 64], [256, 512], splits)]


def quantized_gemm_candidates(block_m: int, gated: bool, elem_bytes: int, quant: QuantSpec) -> list[GemmTiles]:
    if block_m <= GEMV_MAX_BLOCK_M:
        return gemv_candidates(gated)
    weight_bytes = quant.weight_bits() / 8
    if quant.weight_only:
        return _fitting(swapped_candidates(block_m), block_m, gated, elem_bytes, weight_bytes)
    # w8a8 from here: the kernel's A tile is fp8 / int8
    fused_n = [quant.act_group] if quant.act_group > 0 else []
    if block_m <= 32:  # decode: stream the weights
        space = itertools.product(sorted({16, 32, 64, *fused_n}), [128, 256, 512], [1], [2, 4], [4, 6], [False])
    elif block_m == 64:
        space = itertools.product(sorted({64, 128, *fused_n}), [64, 128, 256], [8], [4, 8], [3, 4], [False])
    else:
        space = itertools.product(sorted({64, 128, 256, *fused_n}), [64, 128, 256], [8], [4, 8], [3, 4], [False])
    k_block = w8a8_k_block(quant)
    tiles = [t for t in (GemmTiles(*values) for values in space)
             if tiles_k_groups(t.block_k, quant.group_k) and (k_block is None or t.block_k <= k_block)]
    return _fitting(tiles, block_m, gated, 1, weight_bytes)


def swapped_candidates(block_m: int) -> list[GemmTiles]:
    """Weight-only tensor-core tiles: the swapped loop (weight_only_swapped.py; act-order weights,
    which the tuner does not build, run the other). block_n weight rows sit on wgmma's M side, 64 per
    warpgroup; K steps are cut to one scale group by the kernel (mxfp4's 32 and nvfp4's 16 then run
    four groups per pipeline stage, more shared memory than the filter counts: a candidate that does
    not fit fails at launch and is counted as failed)."""
    if block_m <= 32:  # decode on tensor cores: stream the weights
        space = itertools.product([64, 128], [128, 256], [1], [4], [3, 4, 6], [False])
    else:
        space = itertools.product([64, 128, 256], [64, 128], [8], [4, 8], [3, 5], [False])
    return [GemmTiles(*values, swap_ab=True) for values in space if values[0] >= 64 * (values[3] // 4)]


def w8a8_k_block(quant: QuantSpec) -> int | None:
    """The K block a w8a8 dot must stay within (its scales change at its edges), or None."""
    if quant.weight_only:
        return None
    blocks = [g for g in (quant.act_group, quant.group_k) if g > 0]
    return min(blocks) if blocks else None


def tiles_k_groups(block_k: int, group_k: int) -> bool:
    """A K step covers whole scale groups or lies within one (group_k 0: one group spans K)."""
    return group_k == 0 or block_k % group_k == 0 or group_k % block_k == 0


def _fitting(tiles: list[GemmTiles], block_m: int, gated: bool, act_bytes: float, weight_bytes: float) -> list[GemmTiles]:
    b_tiles = 2 if gated else 1
    fits = [t for t in tiles
            if t.num_stages * (block_m * t.block_k * act_bytes + b_tiles * t.block_k * t.block_n * weight_bytes)
            <= SHARED_MEMORY_BYTES]
    # Two fp32 accumulators of block_m x block_n per program: keep them within the register file.
    return [t for t in fits if b_tiles * block_m * t.block_n // (32 * t.num_warps) <= 128]
