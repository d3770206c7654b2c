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
def _quantize_rows(x_ptr, codes_ptr, scale_ptr, tensor_scale_ptr, sorted_ptr, num_rows_ptr,
                   K, num_pairs, stride_xm, stride_cm, stride_sm,
                   IS_FP8: tl.constexpr, PER_TENSOR: tl.constexpr, STATIC: tl.constexpr,
                   HAS_ROW_MAP: tl.constexpr, NUM_GROUPS: tl.constexpr, GROUP: tl.constexpr):
    """One row per program, seen as [NUM_GROUPS, GROUP] columns (per row: one group of the whole
    row; per 128 columns: the partial last group padded with zeros, as the reference pads it)."""
    row = tl.program_id(0)
    cols = tl.arange(0, NUM_GROUPS)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    ok = cols < K
    load_ok = ok
    if HAS_ROW_MAP:
        if row >= tl.load(num_rows_ptr):
            return  # never read by gemm2
        pair = tl.load(sorted_ptr + row + tl.zeros_like(cols))  # one address, at the tile's shape
        load_ok = ok & (pair < num_pairs)  # padding rows: zero codes
    x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + cols, mask=load_ok, other=0.0).to(tl.float32)
    QMAX: tl.constexpr = FP8_MAX if IS_FP8 else INT8_MAX
    if PER_TENSOR:
        if STATIC:
            scale = tl.load(tensor_scale_ptr)
        else:  # tensor_scale_ptr holds the absolute maximum (from _amax_of_rows)
            scale = tl.maximum(tl.math.div_rn(tl.load(tensor_scale_ptr), QMAX), 1e-12)
        if row == 0:
            tl.store(scale_ptr, scale)
        codes = quantize_values(x, scale, IS_FP8)
    else:
        scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), 1), QMAX), 1e-12)  # [NUM_GROUPS]
        groups = tl.arange(0, NUM_GROUPS)
        tl.store(scale_ptr + row.to(tl.int64) * stride_sm + groups, scale, mask=groups * GROUP < K)
        codes = quantize_values(x, scale[:, None], IS_FP8)
    tl.store(codes_ptr + row.to(tl.int64) * stride_cm + cols, codes, mask=ok)


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
    group = spec.act_group if spec.act_group > 0 else next_pow2(k)
    launch(_quantize_rows, (r,),
           (x, codes, scale, tensor_scale, sorted_pairs, num_rows, k, num_pairs, x.stride(0), codes.stride(0),
            scale.stride(0)),
           dict(IS_FP8=spec.act is ActQuant.FP8, PER_TENSOR=per_tensor, STATIC=static,
                HAS_ROW_MAP=row_map is not None, NUM_GROUPS=next_pow2(cdiv(k, group)), GROUP=group),
           4 if k <= 4096 else 8, 1)
    return QuantizedRows(codes, scale)
