"""Quantization of a GEMM's input rows for the w8a8 schemes (fp8 e4m3 or int8 codes + fp32 scales),
the device-side twin of ``quant.dequant.quantize_activations``: one scale per tensor (dynamic, or
static from the checkpoint), per row, or per row per 128 columns.

gemm1's input is x itself (every row real). gemm2's input is gemm1's activated rows in the expert
alignment: padding rows (and rows past the ones in use) are not tokens, so they get zero codes and
never enter a per-tensor maximum (the reference quantizes the activated rows of valid pairs only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moekit.quant.spec import ACT_PER_TENSOR, ACT_PER_TOKEN, ActQuant, QuantSpec
from moekit.triton_ops.launcher import cdiv, launch, next_pow2
from moekit.triton_ops.quant_formats import FP8_MAX, INT8_MAX, quantize_values

AMAX_TILE_ELEMENTS = 1 << 14  # per program of the per-tensor maximum: few atomics on one address
QUANT_TILE_ELEMENTS = 1 << 12  # per program of the quantization on a GPU (rows x padded columns)
INTERPRETER_TILE_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class QuantizedRows:
    """A GEMM input as the w8a8 kernels read it: codes [R, K] (fp8 e4m3 / int8) and fp32 scales,
    [1] (per tensor), [R, 1] (per row) or [R, ceil(K/group)] (per row per column group)."""

    codes: torch.Tensor
    scale: torch.Tensor


@dataclass(frozen=True)
class ActivatedRows:
    """gemm1's float output with its absolute maximum over the real rows [1] (fp32), taken in
    gemm1's epilogue: a per-tensor scale then needs no pass of its own."""

    values: torch.Tensor
    amax: torch.Tensor


@dataclass(frozen=True)
class RowMap:
    """Which rows of an expert-aligned buffer are real: row < num_rows[0] and sorted[row] < num_pairs."""

    sorted_pairs: torch.Tensor
    num_rows: torch.Tensor
    num_pairs: int


@triton.jit
def _amax_of_rows(x_ptr, amax_ptr, sorted_ptr, num_rows_ptr, R, K, num_pairs, stride_xm,
                  HAS_ROW_MAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """amax[0] = max(amax[0], max |x| over this program's tile of the real rows): one load and one
    atomic per program, so a decode-sized input costs one round trip to memory, not a loop of them."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    real, _ = _real_rows(sorted_ptr, num_rows_ptr, rows, R, num_pairs, HAS_ROW_MAP)
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + ks[None, :],
                mask=real[:, None] & (ks < K)[None, :], other=0.0)
    tl.atomic_max(amax_ptr, tl.max(tl.max(tl.abs(x.to(tl.float32)), 1), 0))


@triton.jit
def _real_rows(sorted_ptr, num_rows_ptr, rows, R, num_pairs, HAS_ROW_MAP: tl.constexpr):
    """Which of ``rows`` hold data worth reading (padding rows do not), and which may be written."""
    written = rows < R
    if HAS_ROW_MAP:
        written = written & (rows < tl.load(num_rows_ptr))
        return written & (tl.load(sorted_ptr + rows, mask=written, other=num_pairs) < num_pairs), written
    return written, written


@triton.jit
def _chunk(x_ptr, row_offsets, stride_xm, cols, first, K, real):
    """Columns first + cols ([NUM_GROUPS, GROUP]) of the program's rows, fp32, zeros past K and in
    rows that are not real."""
    cols = first + cols
    return tl.load(x_ptr + row_offsets * stride_xm + cols[None, :, :], mask=real[:, None, None] & (cols < K)[None],
                   other=0.0).to(tl.float32)


@triton.jit
def _quantize_rows(x_ptr, codes_ptr, scale_ptr, tensor_scale_ptr, sorted_ptr, num_rows_ptr,
                   R, K, num_pairs, stride_xm, stride_cm, stride_sm,
                   IS_FP8: tl.constexpr, PER_TENSOR: tl.constexpr, STATIC: tl.constexpr, PER_ROW: tl.constexpr,
                   HAS_ROW_MAP: tl.constexpr, NUM_GROUPS: tl.constexpr, GROUP: tl.constexpr,
                   NUM_CHUNKS: tl.constexpr, BLOCK_R: tl.constexpr, ON_GPU: tl.constexpr):
    """BLOCK_R rows per program, their columns in NUM_CHUNKS chunks of [NUM_GROUPS, GROUP] (per 128
    columns: NUM_GROUPS groups, a partial last group padded with zeros as the reference pads it;
    per row or tensor: one group, the row's maximum taken over every chunk first)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    real, written = _real_rows(sorted_ptr, num_rows_ptr, rows, R, num_pairs, HAS_ROW_MAP)  # padding: zero codes
    groups = tl.arange(0, NUM_GROUPS)
    cols = groups[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    row_offsets = rows.to(tl.int64)[:, None, None]
    CHUNK: tl.constexpr = NUM_GROUPS * GROUP
    QMAX: tl.constexpr = FP8_MAX if IS_FP8 else INT8_MAX
    scale = 1.0
    if PER_TENSOR:
        if STATIC:
            scale = tl.load(tensor_scale_ptr)
        else:  # tensor_scale_ptr holds the absolute maximum (from _amax_of_rows)
            scale = tl.maximum(tl.math.div_rn(tl.load(tensor_scale_ptr), QMAX), 1e-12)
        if tl.program_id(0) == 0:
            tl.store(scale_ptr, scale)
    elif PER_ROW:
        amax = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for c in range(NUM_CHUNKS):
            x = _chunk(x_ptr, row_offsets, stride_xm, cols, c * CHUNK, K, real)
            amax = tl.maximum(amax, tl.max(tl.max(tl.abs(x), 2), 1))
        row_scale = tl.maximum(tl.math.div_rn(amax, QMAX), 1e-12)
        tl.store(scale_ptr + rows.to(tl.int64) * stride_sm, row_scale, mask=written)
        scale = row_scale[:, None, None]
    for c in range(NUM_CHUNKS):
        x = _chunk(x_ptr, row_offsets, stride_xm, cols, c * CHUNK, K, real)  # [BLOCK_R, NUM_GROUPS, GROUP]
        if PER_TENSOR or PER_ROW:
            chunk_scale = scale
        else:
            group_scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), 2), QMAX), 1e-12)  # [BLOCK_R, NUM_GROUPS]
            first_group = c * NUM_GROUPS
            tl.store(scale_ptr + rows.to(tl.int64)[:, None] * stride_sm + first_group + groups[None, :], group_scale,
                     mask=written[:, None] & ((first_group + groups) * GROUP < K)[None, :])
            chunk_scale = group_scale[:, :, None]
        codes = quantize_values(x, chunk_scale, IS_FP8, ON_GPU)
        chunk_cols = c * CHUNK + cols
        tl.store(codes_ptr + row_offsets * stride_cm + chunk_cols[None, :, :], codes,
                 mask=written[:, None, None] & (chunk_cols < K)[None])


def column_chunks(k: int, group: int) -> tuple[int, int]:
    """(groups per chunk, chunks) for rows of k columns in groups of ``group`` (per row or tensor:
    ``group`` 0, chunks of whole columns). Chunks are powers of two (Triton's tiles); the one
    chosen pads the row least, the larger on a tie: a whole row padded to a power of two wasted 30%
    of the work at gpt-oss's 2880 columns, chunks of 1024 waste 6%. The largest chunk within 1/16
    of the least padding wins (fewer, larger steps)."""
    if group > 0:
        units, sizes = cdiv(k, group), [1 << i for i in range(6)]  # up to 32 groups of 128
    else:
        units, sizes = k, [1 << i for i in range(min(8, next_pow2(k).bit_length() - 1), 13)]  # 256..4096 columns
    sizes = [p for p in sizes if p <= next_pow2(units)]
    least = min(cdiv(units, p) * p for p in sizes)
    best = max(p for p in sizes if cdiv(units, p) * p * 16 <= least * 17)
    return best, cdiv(units, best)


def rows_per_program(rows: int, chunk: int, on_gpu: bool) -> int:
    """Rows one program of _quantize_rows takes: a tile of about QUANT_TILE_ELEMENTS per chunk on a
    GPU (one row per program spent more time in each program's reductions and row bookkeeping than
    in moving its few kilobytes); the interpreter runs one program at a time, so there as many as fit."""
    target = QUANT_TILE_ELEMENTS if on_gpu else INTERPRETER_TILE_ELEMENTS
    return max(1, min(next_pow2(rows), target // chunk))


def code_dtype(spec: QuantSpec) -> torch.dtype:
    return torch.float8_e4m3fn if spec.act is ActQuant.FP8 else torch.int8


def scale_columns(spec: QuantSpec, k: int) -> int:
    """Scales per row of a [R, k] input (0: one per tensor)."""
    if spec.act_group == ACT_PER_TENSOR:
        return 0
    return 1 if spec.act_group == ACT_PER_TOKEN else cdiv(k, spec.act_group)


def quantize_rows(x: torch.Tensor, spec: QuantSpec, static_scale: torch.Tensor | None = None,
                  row_map: RowMap | None = None, amax: torch.Tensor | None = None) -> QuantizedRows:
    """x [R, K] float -> its codes and scales under ``spec``'s activation quantization. With a
    ``row_map``, rows that are not real pairs are left out of the per-tensor maximum and get zero
    codes; rows past the ones in use are not written. ``amax`` [1]: the per-tensor maximum, already
    known. Shapes depend on x's only (graph-safe)."""
    if x.stride(1) != 1:
        x = x.contiguous()
    r, k = x.shape
    codes = torch.empty(r, k, dtype=code_dtype(spec), device=x.device)
    cols = scale_columns(spec, k)
    scale = torch.empty(r, cols, dtype=torch.float32, device=x.device) if cols else \
        torch.empty(1, dtype=torch.float32, device=x.device)
    if r == 0:
        return QuantizedRows(codes, scale)
    per_tensor = cols == 0
    static = per_tensor and spec.act_static and static_scale is not None
    sorted_pairs, num_rows, num_pairs = (row_map.sorted_pairs, row_map.num_rows, row_map.num_pairs) \
        if row_map is not None else (codes, codes, 0)  # unused pointers without a row map
    tensor_scale = scale  # unused unless per tensor
    if static:
        tensor_scale = static_scale.reshape(1).to(torch.float32)
    if per_tensor and not static and amax is not None:
        tensor_scale = amax
    elif per_tensor and not static:
        tensor_scale = torch.zeros(1, dtype=torch.float32, device=x.device)
        block_k = min(1024, next_pow2(k))
        block_r = min(next_pow2(r), max(1, AMAX_TILE_ELEMENTS // block_k))
        launch(_amax_of_rows, (cdiv(r, block_r), cdiv(k, block_k)),
               (x, tensor_scale, sorted_pairs, num_rows, r, k, num_pairs, x.stride(0)),
               dict(HAS_ROW_MAP=row_map is not None, BLOCK_R=block_r, BLOCK_K=block_k), 4, 1)
    per_group = spec.act_group > 0
    chunk_units, num_chunks = column_chunks(k, spec.act_group if per_group else 0)
    num_groups, group = (chunk_units, spec.act_group) if per_group else (1, chunk_units)
    on_gpu = x.device.type != "cpu"
    block_r = rows_per_program(r, num_groups * group, on_gpu)
    launch(_quantize_rows, (cdiv(r, block_r),),
           (x, codes, scale, tensor_scale, sorted_pairs, num_rows, r, k, num_pairs, x.stride(0), codes.stride(0),
            scale.stride(0)),
           dict(IS_FP8=spec.act is ActQuant.FP8, PER_TENSOR=per_tensor, STATIC=static,
                PER_ROW=spec.act_group == ACT_PER_TOKEN, HAS_ROW_MAP=row_map is not None, NUM_GROUPS=num_groups,
                GROUP=group, NUM_CHUNKS=num_chunks, BLOCK_R=block_r, ON_GPU=on_gpu),
           4 if block_r * num_groups * group <= 4096 else 8, 1)
    return QuantizedRows(codes, scale)
