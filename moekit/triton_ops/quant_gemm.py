"""The fused experts GEMMs on quantized weights: the same row blocks, fused gate/up + activation and
weighted epilogue as experts_kernels.py, with weights read in moekit's quantized layout and
dequantized per tile (quant_tiles.py); no dequantized copy of the weights ever exists.

- weight-only (w4a16-*, w8a16-*, mxfp4, nvfp4): packed / int8 tiles dequantized to the
  activations' dtype, dot in that dtype, fp32 accumulate (weight_only_loop.py; act-order g_idx
  gathers each column's group through quant_tiles.dequantized_tile).
- w8a8 (fp8-*, int8-w8a8): the GEMM input arrives quantized (activation_quant.py), the dot runs on
  fp8 / int8 tensor cores (fp32 / int32 accumulate) and the scales multiply its result. gemm1 can
  quantize its own output for gemm2 in the epilogue when one output tile is one scale group
  (BLOCK_N == 128 for per-128 groups, or one tile spanning I for per-row scales).

Kept apart from the unquantized kernels so their generated code stays exactly as tuned.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.activations import Activation, GateUpLayout
from moekit.quant.code_order import RUN_CODES, two_group_runs
from moekit.quant.scale_layout import kernel_scales, words_fit
from moekit.quant.spec import ACT_PER_TENSOR, ACT_PER_TOKEN, ActQuant, QuantizedMatrix, QuantSpec, ScaleFormat
from moekit.quant.spec import WeightFormat
from moekit.triton_ops.activation_quant import (ActivatedRows, QuantizedRows, RowMap, code_dtype, quantize_rows,
                                                scale_columns)
from moekit.triton_ops.align import AlignedPairs
from moekit.triton_ops.experts_kernels import (ACT_CODE, LAST_COMPILED, _activate, _block_expert, _row_block, _tile_ids,
                                               gate_up_rows)
from moekit.triton_ops.launcher import cdiv, launch
from moekit.triton_ops.paired_dequant import PAIRED_EMULATED, PAIRED_OFF, PAIRED_PTX, PAIRED_PTX_FOLDED
from moekit.triton_ops.quant_formats import FP8_MAX, INT8_MAX, quantize_values
from moekit.triton_ops.quant_tiles import block_weight_scale, code_tile, dequantized_tile, load_codes, row_weight_factor
from moekit.triton_ops.tile_configs import GEMV_MAX_BLOCK_M, GemmTiles
from moekit.triton_ops.weight_only_gemv import (GemvOperand, gemv_supports, launch_gemv_gemm1,
                                                launch_gemv_gemm2)
from moekit.triton_ops.weight_only_loop import weight_only_mainloop
from moekit.triton_ops.weight_only_swapped import weight_only_swapped_mainloop

WFMT = {WeightFormat.FP8: 0, WeightFormat.INT8: 1, WeightFormat.UINT4: 2, WeightFormat.E2M1: 3}
SFMT = {ScaleFormat.FP32: 0, ScaleFormat.E8M0: 1, ScaleFormat.E4M3: 2}
AQUANT = {ActQuant.NONE: 0, ActQuant.FP8: 1, ActQuant.INT8: 2}
# fp8 dots without K-blocked scales: add each K step's wgmma result into fp32 (True) or let Hopper's
# reduced-precision accumulator run over the whole K (docs/facts.md: ~2x the error)
FP8_PROMOTED_ACCUMULATION = True


@triton.jit
def _mma(acc, a, a_block_scale, w_block_scale, w_ptr, s_ptr, z_ptr, g_ptr, rows, row_ok, k0, K,
         stride_wn, stride_wk, stride_sn, stride_sk,
         WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr,
         HAS_ZERO: tl.constexpr, HAS_G_IDX: tl.constexpr, A_QUANT: tl.constexpr, A_GROUP: tl.constexpr,
         DOT_PRECISION: tl.constexpr, FP8_PROMOTE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
         W_SCALAR: tl.constexpr):
    """acc += a @ (this K block of the weight rows), scaled where the scales are K-blocked (the
    step's [BLOCK_M] activation and [BLOCK_N] weight block scales, loaded by the caller a step
    ahead: _block_scales). (Branches end in one place: the compiler keeps generating code after an
    early return.)"""
    if A_QUANT == 0:  # weight-only reaches here with act-order only (else weight_only_loop.py)
        w = dequantized_tile(w_ptr, s_ptr, z_ptr, g_ptr, rows, row_ok, k0, K, stride_wn, stride_wk,
                             stride_sn, stride_sk, WFMT, SFMT, HAS_ZERO, BLOCK_K, BLOCK_N, a.dtype)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    else:
        w = code_tile(w_ptr, rows, row_ok, k0 + tl.arange(0, BLOCK_K) < K, k0, stride_wn, stride_wk, WFMT, BLOCK_K)
        if A_GROUP > 0 or GROUP_K > 0:  # 128x128 blocks: scale each block's dot before summing
            part = tl.dot(a, w, out_dtype=acc.dtype)
            if W_SCALAR and A_GROUP > 0:  # one weight block across the tile: one factor per row
                part = part * (a_block_scale * w_block_scale)[:, None]
            elif W_SCALAR:
                part = part * w_block_scale
            else:
                if A_GROUP > 0:
                    part = part * a_block_scale[:, None]
                if GROUP_K > 0:
                    part = part * w_block_scale[None, :]
            acc = acc + part
        elif A_QUANT == 1 and FP8_PROMOTE:  # sm90's fp8 MMA accumulates imprecisely: into fp32 once per K step
            acc = tl.dot(a, w, acc, out_dtype=acc.dtype, max_num_imprecise_acc=BLOCK_K)
        elif A_QUANT == 1:
            acc = tl.dot(a, w, acc, out_dtype=acc.dtype)
        else:  # (int8 dots name their int32 result: triton 3.6 refuses an int32 acc otherwise)
            acc = tl.dot(a, w, acc, out_dtype=acc.dtype)
    return acc


@triton.jit
def _block_scales(xs_ptr, a_rows, a_row_ok, stride_xsm, s_base, gate_rows, up_rows, col_ok, k, num_k,
                  stride_sn, stride_sk, GATED: tl.constexpr, A_GROUP: tl.constexpr, GROUP_N: tl.constexpr,
                  GROUP_K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  W_SCALAR: tl.constexpr):
    """The K-blocked scales of step k (clamped to the last step: the loops load the next step's
    while this one's dots run): the activations' [BLOCK_M] and the gate and up weight rows'
    [BLOCK_N], or with W_SCALAR (the tile's rows in one block of GROUP_N; ``gate_rows``, ``up_rows``
    then the first row of each) one scale each. Ones where the scheme has no such blocks. Loaded in
    the step they are used, these were synchronous loads the step waited on (sm90 SASS: 34 LDG per
    K step, 32 of them one weight scale repeated across the tile's columns)."""
    k0 = tl.minimum(k, num_k - 1) * BLOCK_K
    a_s = tl.full((BLOCK_M,), 1.0, tl.float32)
    g_s = tl.full((BLOCK_N,), 1.0, tl.float32)
    u_s = g_s
    if A_GROUP > 0:
        a_s = tl.load(xs_ptr + a_rows * stride_xsm + k0 // A_GROUP, mask=a_row_ok, other=0.0)
    if GROUP_K > 0 and W_SCALAR:
        g_s = tl.load(s_base + (gate_rows // GROUP_N) * stride_sn + (k0 // GROUP_K) * stride_sk)
        if GATED:
            u_s = tl.load(s_base + (up_rows // GROUP_N) * stride_sn + (k0 // GROUP_K) * stride_sk)
    elif GROUP_K > 0:
        g_s = block_weight_scale(s_base, gate_rows, col_ok, k0, stride_sn, stride_sk, GROUP_N, GROUP_K)
        if GATED:
            u_s = block_weight_scale(s_base, up_rows, col_ok, k0, stride_sn, stride_sk, GROUP_N, GROUP_K)
    return a_s, g_s, u_s


@triton.jit
def _scale_rows(rows, W_SCALAR: tl.constexpr):
    """What _block_scales takes as a tile's weight rows: all of them, or with W_SCALAR the first."""
    if W_SCALAR:
        return tl.min(rows, 0)
    else:
        return rows


@triton.jit
def _act_factor(xs_ptr, a_rows, row_ok, stride_xsm, A_QUANT: tl.constexpr, A_GROUP: tl.constexpr):
    """The activations' scale applied once to the accumulator ([BLOCK_M, 1] or scalar)."""
    if A_QUANT == 0 or A_GROUP > 0:
        return 1.0
    elif A_GROUP == -1:
        return tl.load(xs_ptr)
    else:
        return tl.load(xs_ptr + a_rows * stride_xsm, mask=row_ok, other=0.0)[:, None]


@triton.jit
def _gemm1_quant(
    x_ptr, xs_ptr, w_ptr, ws_ptr, wz_ptr, wg_ptr, wgs_ptr, bias_ptr, out_ptr, out_scale_ptr,
    sorted_ptr, block_expert_ptr, num_rows_ptr,
    num_pairs, top_k, K, I, NUM_BLOCKS_M,
    stride_xm, stride_xsm, stride_we, stride_wn, stride_wk, stride_se, stride_sn, stride_sk, stride_ge,
    stride_be, stride_bn, stride_om, stride_osm,
    alpha, limit,
    ACT: tl.constexpr, GATED: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_BIAS: tl.constexpr,
    WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_G_IDX: tl.constexpr, HAS_GLOBAL: tl.constexpr,
    A_QUANT: tl.constexpr, A_GROUP: tl.constexpr, OUT_QUANT: tl.constexpr, OUT_AMAX: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FP8_PROMOTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr,
    SCALE_WORDS: tl.constexpr, PAIRED: tl.constexpr, ON_GPU: tl.constexpr, W_SCALAR: tl.constexpr,
    MMA_ORDER: tl.constexpr, WORD_TAIL: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(NUM_BLOCKS_M, tl.cdiv(I, BLOCK_N), GROUP_M)
    expert = _block_expert(block_expert_ptr, num_rows_ptr, pid_m, 0, BLOCK_M, False)  # (aligned: E unused)
    if expert < 0:
        return
    rows, pairs, row_ok = _row_block(sorted_ptr, pid_m, num_pairs, BLOCK_M, False)
    tokens = (pairs // top_k).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < I
    gate_rows, up_rows = gate_up_rows(cols, I, INTERLEAVED)
    w_base = w_ptr + expert * stride_we
    s_base = ws_ptr + expert * stride_se
    z_base = wz_ptr + expert * stride_se
    g_base = wg_ptr + expert * stride_ge
    if A_QUANT == 0 and not HAS_G_IDX and SWAP_AB:
        acc_g, acc_u = weight_only_swapped_mainloop(x_ptr, tokens, row_ok, stride_xm, K, w_base, s_base, z_base,
                                                    gate_rows, up_rows, col_ok, stride_wn, stride_wk, stride_sn,
                                                    stride_sk, GATED, WFMT, SFMT, GROUP_K, HAS_ZERO, SCALE_WORDS,
                                                    PAIRED, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
                                                    MMA_ORDER, ON_GPU, WORD_TAIL)
    elif A_QUANT == 0 and not HAS_G_IDX:
        acc_g, acc_u = weight_only_mainloop(x_ptr, tokens, row_ok, stride_xm, K, w_base, s_base, z_base, gate_rows,
                                            up_rows, col_ok, stride_wn, stride_wk, stride_sn, stride_sk, GATED, WFMT,
                                            SFMT, GROUP_K, HAS_ZERO, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
                                            EVEN_K)
    else:
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = x_ptr + tokens[:, None] * stride_xm + ks[None, :]
        if A_QUANT == 2:
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        num_k = tl.cdiv(K, BLOCK_K)
        W_BLOCK_K: tl.constexpr = GROUP_K if A_QUANT > 0 else 0  # (act-order weight-only: no block scales)
        g_scale_rows = _scale_rows(gate_rows, W_SCALAR)
        u_scale_rows = _scale_rows(up_rows, W_SCALAR)
        next_a_s, next_g_s, next_u_s = _block_scales(xs_ptr, tokens, row_ok, stride_xsm, s_base, g_scale_rows,
                                                     u_scale_rows, col_ok, 0, num_k, stride_sn, stride_sk, GATED,
                                                     A_GROUP, GROUP_N, W_BLOCK_K, BLOCK_K, BLOCK_M, BLOCK_N, W_SCALAR)
        for k in range(0, num_k):
            k0 = k * BLOCK_K
            a_s, g_s, u_s = next_a_s, next_g_s, next_u_s
            if A_GROUP > 0 or W_BLOCK_K > 0:
                next_a_s, next_g_s, next_u_s = _block_scales(xs_ptr, tokens, row_ok, stride_xsm, s_base, g_scale_rows,
                                                             u_scale_rows, col_ok, k + 1, num_k, stride_sn, stride_sk,
                                                             GATED, A_GROUP, GROUP_N, W_BLOCK_K, BLOCK_K, BLOCK_M,
                                                             BLOCK_N, W_SCALAR)
            a = load_codes(a_ptrs, row_ok[:, None] & (ks < K - k0)[None, :], A_QUANT == 1)
            acc_g = _mma(acc_g, a, a_s, g_s, w_base, s_base, z_base, g_base, gate_rows, col_ok, k0, K,
                         stride_wn, stride_wk, stride_sn, stride_sk, WFMT, SFMT, GROUP_N, GROUP_K, HAS_ZERO,
                         HAS_G_IDX, A_QUANT, A_GROUP, DOT_PRECISION, FP8_PROMOTE, BLOCK_K, BLOCK_N, W_SCALAR)
            if GATED:
                acc_u = _mma(acc_u, a, a_s, u_s, w_base, s_base, z_base, g_base, up_rows, col_ok, k0, K,
                             stride_wn, stride_wk, stride_sn, stride_sk, WFMT, SFMT, GROUP_N, GROUP_K, HAS_ZERO,
                             HAS_G_IDX, A_QUANT, A_GROUP, DOT_PRECISION, FP8_PROMOTE, BLOCK_K, BLOCK_N, W_SCALAR)
            a_ptrs += BLOCK_K
    a_factor = _act_factor(xs_ptr, tokens, row_ok, stride_xsm, A_QUANT, A_GROUP)
    gs_ptr = wgs_ptr + expert
    gate = acc_g.to(tl.float32) * a_factor * row_weight_factor(s_base, gs_ptr, gate_rows, col_ok, stride_sn, WFMT, SFMT,
                                                               GROUP_N, GROUP_K, HAS_GLOBAL)
    up = acc_u.to(tl.float32)
    if GATED:
        up = up * a_factor * row_weight_factor(s_base, gs_ptr, up_rows, col_ok, stride_sn, WFMT, SFMT, GROUP_N, GROUP_K,
                                               HAS_GLOBAL)
    if HAS_BIAS:
        b_base = bias_ptr + expert * stride_be
        gate += tl.load(b_base + gate_rows * stride_bn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            up += tl.load(b_base + up_rows * stride_bn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    h = _activate(gate, up, alpha, limit, ACT)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    if OUT_QUANT > 0:  # this tile is one scale group of gemm2's input: quantize it here
        QMAX: tl.constexpr = FP8_MAX if OUT_QUANT == 1 else INT8_MAX
        h = tl.where(col_ok[None, :], h, 0.0)
        scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(h), 1), QMAX), 1e-12)
        tl.store(out_scale_ptr + rows.to(tl.int64) * stride_osm + pid_n, scale)
        codes = quantize_values(h, scale[:, None], OUT_QUANT == 1, ON_GPU)
        if OUT_QUANT == 1 and out_ptr.dtype.element_ty == tl.uint8:  # the interpreter's fp8 (see _bytes)
            codes = codes.to(tl.uint8, bitcast=True)
        tl.store(out_ptrs, codes, mask=col_ok[None, :])
    else:
        stored = h.to(out_ptr.dtype.element_ty)
        tl.store(out_ptrs, stored, mask=col_ok[None, :])
        if OUT_AMAX:  # gemm2's per-tensor scale: the maximum over the real rows, as stored
            real = tl.where(row_ok[:, None] & col_ok[None, :], tl.abs(stored.to(tl.float32)), 0.0)
            tl.atomic_max(out_scale_ptr, tl.max(tl.max(real, 1), 0))


@triton.jit
def _gemm2_quant(
    a_ptr, as_ptr, w_ptr, ws_ptr, wz_ptr, wg_ptr, wgs_ptr, bias_ptr, weight_ptr, out_ptr,
    sorted_ptr, block_expert_ptr, num_rows_ptr,
    num_pairs, N, K, NUM_BLOCKS_M,
    stride_am, stride_asm, stride_we, stride_wn, stride_wk, stride_se, stride_sn, stride_sk, stride_ge,
    stride_be, stride_bn, stride_om,
    HAS_BIAS: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_G_IDX: tl.constexpr, HAS_GLOBAL: tl.constexpr,
    A_QUANT: tl.constexpr, A_GROUP: tl.constexpr, DOT_PRECISION: tl.constexpr, FP8_PROMOTE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr, SCALE_WORDS: tl.constexpr, PAIRED: tl.constexpr,
    W_SCALAR: tl.constexpr, MMA_ORDER: tl.constexpr, ON_GPU: tl.constexpr, WORD_TAIL: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(NUM_BLOCKS_M, tl.cdiv(N, BLOCK_N), GROUP_M)
    expert = _block_expert(block_expert_ptr, num_rows_ptr, pid_m, 0, BLOCK_M, False)  # (aligned: E unused)
    if expert < 0:
        return
    rows, pairs, row_ok = _row_block(sorted_ptr, pid_m, num_pairs, BLOCK_M, False)
    arows = rows.to(tl.int64)  # the input is stored by aligned row (padding rows finite, never stored)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w_base = w_ptr + expert * stride_we
    s_base = ws_ptr + expert * stride_se
    z_base = wz_ptr + expert * stride_se
    g_base = wg_ptr + expert * stride_ge
    all_rows = rows >= 0
    if A_QUANT == 0 and not HAS_G_IDX and SWAP_AB:
        acc, _unused = weight_only_swapped_mainloop(a_ptr, arows, all_rows, stride_am, K, w_base, s_base, z_base,
                                                    cols, cols, col_ok, stride_wn, stride_wk, stride_sn, stride_sk,
                                                    False, WFMT, SFMT, GROUP_K, HAS_ZERO, SCALE_WORDS, PAIRED,
                                                    DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, MMA_ORDER,
                                                    ON_GPU, WORD_TAIL)
    elif A_QUANT == 0 and not HAS_G_IDX:
        acc, _unused = weight_only_mainloop(a_ptr, arows, all_rows, stride_am, K, w_base, s_base, z_base, cols, cols,
                                            col_ok, stride_wn, stride_wk, stride_sn, stride_sk, False, WFMT, SFMT,
                                            GROUP_K, HAS_ZERO, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
    else:
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + arows[:, None] * stride_am + ks[None, :]
        if A_QUANT == 2:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        num_k = tl.cdiv(K, BLOCK_K)
        W_BLOCK_K: tl.constexpr = GROUP_K if A_QUANT > 0 else 0  # (act-order weight-only: no block scales)
        w_scale_rows = _scale_rows(cols, W_SCALAR)
        next_a_s, next_w_s, _unused = _block_scales(as_ptr, arows, all_rows, stride_asm, s_base, w_scale_rows,
                                                    w_scale_rows, col_ok, 0, num_k, stride_sn, stride_sk, False,
                                                    A_GROUP, GROUP_N, W_BLOCK_K, BLOCK_K, BLOCK_M, BLOCK_N, W_SCALAR)
        for k in range(0, num_k):
            k0 = k * BLOCK_K
            a_s, w_s = next_a_s, next_w_s
            if A_GROUP > 0 or W_BLOCK_K > 0:
                next_a_s, next_w_s, _unused = _block_scales(as_ptr, arows, all_rows, stride_asm, s_base, w_scale_rows,
                                                            w_scale_rows, col_ok, k + 1, num_k, stride_sn, stride_sk,
                                                            False, A_GROUP, GROUP_N, W_BLOCK_K, BLOCK_K, BLOCK_M,
                                                            BLOCK_N, W_SCALAR)
            a = load_codes(a_ptrs, (ks < K - k0)[None, :], A_QUANT == 1)
            acc = _mma(acc, a, a_s, w_s, w_base, s_base, z_base, g_base, cols, col_ok, k0, K,
                       stride_wn, stride_wk, stride_sn, stride_sk, WFMT, SFMT, GROUP_N, GROUP_K, HAS_ZERO,
                       HAS_G_IDX, A_QUANT, A_GROUP, DOT_PRECISION, FP8_PROMOTE, BLOCK_K, BLOCK_N, W_SCALAR)
            a_ptrs += BLOCK_K
    y = acc.to(tl.float32) * _act_factor(as_ptr, arows, all_rows, stride_asm, A_QUANT, A_GROUP)
    y = y * row_weight_factor(s_base, wgs_ptr + expert, cols, col_ok, stride_sn, WFMT, SFMT, GROUP_N, GROUP_K,
                              HAS_GLOBAL)
    if HAS_BIAS:
        y += tl.load(bias_ptr + expert * stride_be + cols * stride_bn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y *= tl.load(weight_ptr + pairs, mask=row_ok, other=0.0)[:, None]
    out_ptrs = out_ptr + pairs.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """fp8 tensors go to the interpreter (CPU tensors) as their bytes (see quant_tiles.load_codes)."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn and t.device.type == "cpu" else t


def _weight_args(m: QuantizedMatrix):
    """Pointers and strides of a quantized matrix; absent tensors point at the codes (never read:
    their constexpr flag is off). Zero points share the scales' shape and are made to share their
    strides."""
    scale = kernel_scales(m)  # (e4m3 as bytes: decoded from its bits in the kernel)
    zero = m.zero.contiguous() if m.zero is not None else m.data
    g_idx = m.g_idx.contiguous() if m.g_idx is not None else m.data
    gscale = m.global_scale if m.global_scale is not None else scale
    return (_bytes(m.data), scale, zero, g_idx, gscale), (scale.stride(0), scale.stride(1), scale.stride(2),
                                                  g_idx.stride(0) if m.g_idx is not None else 0)


def _scale_words(spec: QuantSpec, m: QuantizedMatrix, scale: torch.Tensor, swap_ab: bool, block_k: int) -> bool:
    """Whether the swapped loop reads one-byte group scales four groups at a time, as aligned 32-bit
    words (weight_only_swapped.py): K steps of one group, rows of scales on word boundaries with
    their last word inside the storage (quant/scale_layout.py: the layer pads rows of 90 groups to
    92), no zero points. K past the last whole word runs single steps with byte scales. On the CPU
    (the interpreter) the words are read too, so the path is tested."""
    return (swap_ab and spec.weight_only and spec.group_k > 0 and m.zero is None and scale.dtype == torch.uint8
            and block_k == spec.group_k and words_fit(scale))


def paired_mode(spec: QuantSpec, swap_ab: bool, dtype: torch.dtype, compiled: bool,
                small_scales: bool = False) -> int:
    """How the swapped loop dequantizes codes (paired_dequant.py): in 16-bit pairs for uint4 and
    int8 with bf16/fp16 activations and e2m1 with bf16 ones (by inline PTX on the GPU; the integer
    formats' pair numerics computed in fp32 under the interpreter, which runs no PTX), else through
    fp32. ``compiled``: the kernel is compiled (tensors not on the CPU: CUDA, or meta for moekit asm).
    ``small_scales``: e8m0 scales of at most 2 (QuantizedMatrix.scales_at_most_two), which take
    e2m1's 2**126 into their pair."""
    integer = spec.weight in (WeightFormat.UINT4, WeightFormat.INT8) and spec.weight_only
    if swap_ab and integer and dtype in (torch.bfloat16, torch.float16):
        return (PAIRED_PTX if compiled else PAIRED_EMULATED).value
    if swap_ab and spec.weight is WeightFormat.E2M1 and dtype == torch.bfloat16 and compiled:
        folds = small_scales and spec.scale_format is ScaleFormat.E8M0
        return (PAIRED_PTX_FOLDED if folds else PAIRED_PTX).value
    return PAIRED_OFF.value


def _weight_constexprs(spec: QuantSpec, m: QuantizedMatrix) -> dict:
    return dict(WFMT=WFMT[spec.weight], SFMT=SFMT[spec.scale_format], GROUP_N=spec.group_n, GROUP_K=spec.group_k,
                HAS_ZERO=m.zero is not None, HAS_G_IDX=m.g_idx is not None and spec.group_k > 0,
                HAS_GLOBAL=m.global_scale is not None, MMA_ORDER=m.mma_order)


def _check_code_order(name: str, m: QuantizedMatrix, spec: QuantSpec, swap_ab: bool, block_k: int,
                      scale_words: bool, k: int) -> None:
    """Codes in MMA order (quant/code_order.py) are read by the swapped loop (whole 16-byte runs per
    K step; runs of two groups: scale-word steps over rows of whole words) and the decode GEMV only."""
    if not m.mma_order:
        return
    if two_group_runs(spec):
        if not (swap_ab and scale_words and k % (4 * block_k) == 0):
            raise ValueError(f"{name}'s codes are in MMA order (quant/code_order.py) with runs of two scale groups, "
                             f"which only the swapped tensor-core loop's scale-word steps over rows of whole words "
                             f"and the decode GEMV read; got swap_ab={swap_ab}, scale words {scale_words}, K {k}")
    elif not swap_ab or block_k % RUN_CODES:
        raise ValueError(f"{name}'s codes are in MMA order (quant/code_order.py), which only the swapped "
                         f"tensor-core loop with K steps of whole {RUN_CODES}-code runs and the decode GEMV read; "
                         f"got swap_ab={swap_ab}, a K step of {block_k}")


def _act_group(spec: QuantSpec) -> int:
    return -1 if spec.act_group == ACT_PER_TENSOR else spec.act_group


def quant_block_k(spec: QuantSpec, block_k: int, g_idx: bool = False, swap_ab: bool = False) -> int:
    """The K step the kernels can take for a requested one. K-blocked w8a8 scales need it to divide
    the block (128). The weight-only loop spans at most two scale groups per step and needs 16
    columns per dot (32 for packed codes: two dots of the even and odd columns). The swapped loop
    stays within one scale group: a step spanning two made Triton take the dequantized tile through
    shared memory (sm90 SASS: STS + LDSM per step)."""
    if not spec.weight_only:
        if spec.act_group > 0 or spec.group_k > 0:
            return min(block_k, spec.act_group if spec.act_group > 0 else spec.group_k)
        return block_k
    if g_idx:
        return block_k
    if swap_ab:
        return max(min(block_k, spec.group_k) if spec.group_k > 0 else block_k, 16)
    if spec.group_k > 0:
        block_k = min(block_k, 2 * spec.group_k)
    return max(block_k, 32 if spec.weight.packed else 16)


def fuses_output_quant(spec: QuantSpec, inter: int, block_n: int) -> bool:
    """Whether gemm1 can quantize its own output for gemm2: one output tile is one scale group."""
    if spec.weight_only or spec.act_group == ACT_PER_TENSOR:
        return False
    if spec.act_group == ACT_PER_TOKEN:
        return block_n >= inter
    return block_n == spec.act_group


def launch_gemm1_quant(x, w13: QuantizedMatrix, w13_bias, aligned: AlignedPairs, top_k: int,
                       activation: Activation, gate_up_layout: GateUpLayout, g: GemmTiles, spec: QuantSpec,
                       a_scale: torch.Tensor | None = None, w2_mma_order: bool = False):
    """gemm1 on quantized w13 (logical [E, 2I, H]). ``x`` is [T, H] in the layer dtype (quantized
    here for w8a8, with the static ``a_scale`` where the scheme has one) or already a
    ``QuantizedRows``. Returns the activated rows [rows, I] for gemm2: in the layer dtype
    (weight-only), in fp32 (w8a8 per row or with a static scale), in fp32 with their absolute
    maximum over the real rows (``ActivatedRows``: w8a8 with a dynamic per-tensor scale), or already
    quantized (``QuantizedRows``: w8a8 whose gemm1 tile is one scale group). ``w2_mma_order``: w2's
    code order, in which the decode GEMV writes gemm2's operand."""
    if aligned.block_m <= GEMV_MAX_BLOCK_M:
        _check_gemv(spec, w13, x.shape[1], w13.data.shape[1] // (2 if activation.gated else 1), aligned.block_m)
        return launch_gemv_gemm1(x, w13, w13_bias, aligned, top_k, activation,
                                 gate_up_layout is GateUpLayout.INTERLEAVED, g, spec, w2_mma_order)
    w8a8 = not spec.weight_only
    # w8a8: gemm2's input is quantized from fp32, as the reference does (rounding it to bf16 first
    # moves ~1.5% of the fp8 codes by a step: ~1.6e-2 relative error, measured by the bench).
    out_dtype = torch.float32 if w8a8 or isinstance(x, QuantizedRows) else x.dtype
    if w8a8 and not isinstance(x, QuantizedRows):
        x = quantize_rows(x, spec, a_scale)
    x_codes, x_scale = (_bytes(x.codes), x.scale) if w8a8 else (x, x)
    if x_codes.stride(1) != 1:
        x_codes = x_codes.contiguous()
    rows, block_m = aligned.rows, aligned.block_m
    hidden = x_codes.shape[1]
    inter = w13.data.shape[1] // 2 if activation.gated else w13.data.shape[1]
    block_k = quant_block_k(spec, g.block_k, w13.g_idx is not None, g.swap_ab)
    out_quant = w8a8 and fuses_output_quant(spec, inter, g.block_n)
    out_amax = w8a8 and spec.act_group == ACT_PER_TENSOR and not spec.act_static
    device = x_codes.device
    if out_quant:
        out = QuantizedRows(torch.empty(rows, inter, dtype=code_dtype(spec), device=device),
                            torch.empty(rows, scale_columns(spec, inter), dtype=torch.float32, device=device))
        out_t, out_s = _bytes(out.codes), out.scale
    else:
        out = out_t = torch.empty(rows, inter, dtype=out_dtype, device=device)
        out_s = out_t
        if out_amax:
            out_s = torch.zeros(1, dtype=torch.float32, device=device)
            out = ActivatedRows(out_t, out_s)
    bias = w13_bias if w13_bias is not None else x_codes
    (data, scale, zero, g_idx, gscale), (sse, ssn, ssk, sge) = _weight_args(w13)
    scale_words = _scale_words(spec, w13, scale, g.swap_ab, block_k)
    _check_code_order("w13", w13, spec, g.swap_ab, block_k, scale_words, hidden)
    LAST_COMPILED["gemm1"] = launch(
        _gemm1_quant, (rows // block_m * cdiv(inter, g.block_n),),
        (x_codes, x_scale, data, scale, zero, g_idx, gscale, bias, out_t, out_s,
         aligned.sorted_pairs, aligned.block_expert, aligned.num_rows,
         x_codes.shape[0] * top_k, top_k, hidden, inter, rows // block_m,
         x_codes.stride(0), x_scale.stride(0), data.stride(0), data.stride(1), data.stride(2), sse, ssn, ssk, sge,
         bias.stride(0), bias.stride(-1), out_t.stride(0), out_s.stride(0), activation.alpha, activation.limit),
        dict(ACT=ACT_CODE[activation.kind], GATED=activation.gated,
             INTERLEAVED=gate_up_layout is GateUpLayout.INTERLEAVED, HAS_BIAS=w13_bias is not None,
             **_weight_constexprs(spec, w13), A_QUANT=AQUANT[spec.act], A_GROUP=_act_group(spec),
             OUT_QUANT=AQUANT[spec.act] if out_quant else 0, OUT_AMAX=out_amax, DOT_PRECISION=_precision(x_codes.dtype),
             FP8_PROMOTE=FP8_PROMOTED_ACCUMULATION,
             BLOCK_M=block_m, BLOCK_N=g.block_n, BLOCK_K=block_k, GROUP_M=g.group_m, EVEN_K=hidden % block_k == 0,
             SWAP_AB=g.swap_ab, SCALE_WORDS=scale_words,
             WORD_TAIL=hidden % (4 * block_k) != 0,
             PAIRED=paired_mode(spec, g.swap_ab, x_codes.dtype, x_codes.device.type != "cpu",
                                w13.scales_at_most_two),
             ON_GPU=x_codes.device.type != "cpu",
             W_SCALAR=_one_weight_block(spec, g.block_n, inter, gate_up_layout is GateUpLayout.INTERLEAVED)),
        g.num_warps, g.num_stages)
    return out


def launch_gemm2_quant(activated, w2: QuantizedMatrix, w2_bias, topk_weights, aligned: AlignedPairs,
                       out_rows: torch.Tensor, g: GemmTiles, spec: QuantSpec, a_scale: torch.Tensor | None = None):
    """gemm2 on quantized w2 (logical [E, H, I]) into out_rows[pair]. ``activated`` is gemm1's
    output: float rows or ``ActivatedRows`` (quantized here for w8a8, real rows only) or
    ``QuantizedRows`` or ``GemvOperand`` (decode-sized blocks: weight_only_gemv.py)."""
    if isinstance(activated, GemvOperand):
        return launch_gemv_gemm2(activated, w2, w2_bias, topk_weights, aligned, out_rows, g, spec)
    if isinstance(activated, ActivatedRows) or (not spec.weight_only and not isinstance(activated, QuantizedRows)):
        values, amax = (activated.values, activated.amax) if isinstance(activated, ActivatedRows) else (activated, None)
        activated = quantize_rows(values, spec, a_scale,
                                  RowMap(aligned.sorted_pairs, aligned.num_rows, topk_weights.numel()), amax=amax)
    a, a_scale_t = (_bytes(activated.codes), activated.scale) if isinstance(activated, QuantizedRows) \
        else (activated, activated)
    rows, block_m = aligned.rows, aligned.block_m
    hidden = w2.data.shape[1]
    inter = a.shape[1]
    block_k = quant_block_k(spec, g.block_k, w2.g_idx is not None, g.swap_ab)
    bias = w2_bias if w2_bias is not None else out_rows
    (data, scale, zero, g_idx, gscale), (sse, ssn, ssk, sge) = _weight_args(w2)
    scale_words = _scale_words(spec, w2, scale, g.swap_ab, block_k)
    _check_code_order("w2", w2, spec, g.swap_ab, block_k, scale_words, inter)
    LAST_COMPILED["gemm2"] = launch(
        _gemm2_quant, (rows // block_m * cdiv(hidden, g.block_n),),
        (a, a_scale_t, data, scale, zero, g_idx, gscale, bias, topk_weights.reshape(-1), out_rows,
         aligned.sorted_pairs, aligned.block_expert, aligned.num_rows,
         topk_weights.numel(), hidden, inter, rows // block_m,
         a.stride(0), a_scale_t.stride(0), data.stride(0), data.stride(1), data.stride(2), sse, ssn, ssk, sge,
         bias.stride(0), bias.stride(-1), out_rows.stride(0)),
        dict(HAS_BIAS=w2_bias is not None, **_weight_constexprs(spec, w2), A_QUANT=AQUANT[spec.act],
             A_GROUP=_act_group(spec), DOT_PRECISION=_precision(a.dtype), FP8_PROMOTE=FP8_PROMOTED_ACCUMULATION,
             BLOCK_M=block_m, BLOCK_N=g.block_n, BLOCK_K=block_k, GROUP_M=g.group_m, EVEN_K=inter % block_k == 0,
             SWAP_AB=g.swap_ab, SCALE_WORDS=scale_words,
             WORD_TAIL=inter % (4 * block_k) != 0,
             PAIRED=paired_mode(spec, g.swap_ab, a.dtype, a.device.type != "cpu", w2.scales_at_most_two),
             W_SCALAR=_one_weight_block(spec, g.block_n), ON_GPU=a.device.type != "cpu"),
        g.num_warps, g.num_stages)
    return out_rows


def _one_weight_block(spec: QuantSpec, block_n: int, inter: int = 0, interleaved: bool = False) -> bool:
    """Whether every output tile's weight rows lie in one block of block-scaled weights (GROUP_N rows;
    tiles start at multiples of block_n): then a K step loads one scale per matrix, not one per
    column. gemm1's up rows start at ``inter`` (concatenated), or gate and up rows alternate (2c,
    2c + 1: interleaved). Block sizes and tiles are powers of two."""
    if spec.weight_only or spec.group_k == 0 or spec.group_n <= 1:
        return False
    if interleaved:  # rows 2c and 2c + 1 of the tile's columns c: 2 * block_n rows from a multiple of that
        return 2 * block_n <= spec.group_n
    return block_n <= spec.group_n and inter % spec.group_n == 0


def _check_gemv(spec: QuantSpec, w13: QuantizedMatrix, hidden: int, inter: int, block_m: int) -> None:
    if block_m not in (1, 2, 4):
        raise ValueError(f"row blocks of 1, 2 or 4 rows run the decode GEMV (weight_only_gemv.py); got {block_m}")
    if not gemv_supports(spec, w13, hidden, inter):
        raise ValueError(f"row blocks of {GEMV_MAX_BLOCK_M} or fewer rows run the decode GEMV "
                         f"(weight_only_gemv.py), which does not take {spec.scheme} at hidden {hidden}, "
                         f"intermediate {inter}; use block_m >= 16")


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 exact (tests); ignored for 16/8-bit dots
