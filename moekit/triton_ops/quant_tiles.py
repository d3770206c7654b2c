"""Weight tiles of quantized expert matrices (moekit's layout, quant/spec.py) inside the GEMM loop,
and the scale factors around the dot. Codes of the format constants:

    WFMT: 0 fp8 e4m3, 1 int8, 2 uint4 (packed), 3 e2m1 (packed)
    SFMT: 0 fp32, 1 e8m0 (bytes), 2 e4m3 (bytes: decoded from bits, no fp8 instruction)

Weight-only schemes dequantize a tile to the activations' dtype before the dot: codes minus the
zero point, times the group scale, with no int-to-float conversion instruction (quant_formats).
Factors shared by a whole output row (a scale spanning K, the nvfp4 global scale) are left to the
epilogue, on the accumulator. w8a8 schemes feed the raw fp8 / int8 codes to the dot; their scales
multiply the dot's result per K block (128x128 blocks) or the accumulator once (per tensor, per
channel).
"""

from __future__ import annotations

import triton
import triton.language as tl

from moekit.triton_ops.quant_formats import (E2M1_UNBIAS, E4M3_E2M1_REST, E4M3_E2M1_SHIFT, e2m1_scaled_down,
                                             e4m3_values, e8m0_values, int8_minus, uint4_minus, unpack_nibbles_nk)

UINT4_MIDPOINT = tl.constexpr(8.0)  # symmetric int4 codes store q + 8


@triton.jit
def scale_values(raw, SFMT: tl.constexpr):
    if SFMT == 0:
        return raw.to(tl.float32)
    elif SFMT == 1:
        return e8m0_values(raw.to(tl.int32))
    else:
        return e4m3_values(raw.to(tl.int32))


@triton.jit
def _values(codes, zero, WFMT: tl.constexpr):
    """Codes as fp32 values minus the zero point (broadcast against codes); e2m1 scaled by
    2**-126 (see E2M1_UNBIAS, folded into the scale)."""
    if WFMT == 3:
        return e2m1_scaled_down(codes)
    elif WFMT == 2:
        return uint4_minus(codes, zero)
    else:
        return int8_minus(codes, zero)


@triton.jit
def _zero(z_ptrs, mask, WFMT: tl.constexpr, HAS_ZERO: tl.constexpr):
    """The zero point in the code domain (fp32): the stored one, or the format's midpoint."""
    if HAS_ZERO:
        return tl.load(z_ptrs, mask=mask, other=0).to(tl.float32)
    elif WFMT == 2:
        return UINT4_MIDPOINT
    else:
        return 0.0


@triton.jit
def _group_scale(s_ptrs, mask, WFMT: tl.constexpr, SFMT: tl.constexpr):
    """A group's scale, times the 2**126 that e2m1_scaled_down leaves out (all of it for e8m0 and
    fp32 scales; for e4m3 ones 2**117, the rest in the epilogue: row_weight_factor)."""
    raw = tl.load(s_ptrs, mask=mask, other=0)
    if WFMT == 3 and SFMT == 2:
        s = e4m3_values(raw.to(tl.int32), E4M3_E2M1_SHIFT)
    else:
        s = scale_values(raw, SFMT)
        if WFMT == 3:
            s = s * E2M1_UNBIAS
    return s


@triton.jit
def dequantized_tile(d_ptr, s_ptr, z_ptr, g_ptr, rows, row_ok, k0, K,
                     stride_dn, stride_dk, stride_sn, stride_sk,
                     WFMT: tl.constexpr, SFMT: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Weight-only with act-order (GPTQ ``g_idx``): the [BLOCK_K, BLOCK_N] tile (input columns
    k0.., weight rows ``rows``) as DOT_DTYPE values, each column's scale and zero point gathered
    through g_idx. Built as [BLOCK_N, BLOCK_K] (K contiguous in memory, where the two nibbles of a
    byte are neighbours) and transposed at the end. Columns past K come out finite; the activations
    there are zero. (Without g_idx the weight-only GEMMs run weight_only_loop.py.)"""
    ks = k0 + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    if WFMT >= 2:
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(d_ptr + rows[:, None] * stride_dn + kb[None, :] * stride_dk,
                         mask=row_ok[:, None] & (kb < K // 2)[None, :], other=0)
        codes = unpack_nibbles_nk(packed.to(tl.int32))
    else:
        codes = tl.load(d_ptr + rows[:, None] * stride_dn + ks[None, :] * stride_dk,
                        mask=row_ok[:, None] & k_ok[None, :], other=0).to(tl.int32)
    groups = tl.load(g_ptr + ks, mask=k_ok, other=0)
    offs = rows[:, None] * stride_sn + groups[None, :] * stride_sk
    ok = row_ok[:, None] & k_ok[None, :]
    w = _values(codes, _zero(z_ptr + offs, ok, WFMT, HAS_ZERO), WFMT) * _group_scale(s_ptr + offs, ok, WFMT, SFMT)
    return tl.trans(w.to(DOT_DTYPE))


@triton.jit
def load_codes(ptrs, mask, IS_FP8: tl.constexpr):
    """A masked load of w8a8 codes, zero where masked. fp8 codes travel as bytes under the
    interpreter (a masked fp8 load cannot take other=0 there) and as fp8 on a GPU (bitcasting loaded
    bytes sends the tile through registers and back to shared memory before every wgmma)."""
    if IS_FP8 and ptrs.dtype.element_ty == tl.uint8:
        return tl.load(ptrs, mask=mask, other=0).to(tl.float8e4nv, bitcast=True)
    elif IS_FP8:
        return tl.load(ptrs, mask=mask, other=0.0)
    else:
        return tl.load(ptrs, mask=mask, other=0)


@triton.jit
def code_tile(d_ptr, rows, row_ok, k_ok, k0, stride_dn, stride_dk, WFMT: tl.constexpr, BLOCK_K: tl.constexpr):
    """w8a8: the raw fp8 / int8 codes [BLOCK_K, BLOCK_N] (K-major, as fp8 wgmma wants them)."""
    ks = k0 + tl.arange(0, BLOCK_K)
    return load_codes(d_ptr + ks[:, None] * stride_dk + rows[None, :] * stride_dn, k_ok[:, None] & row_ok[None, :],
                      WFMT == 0)


@triton.jit
def block_weight_scale(s_ptr, rows, row_ok, k0, stride_sn, stride_sk, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr):
    """w8a8 with K-blocked weight scales: the [BLOCK_N] scales of the block holding column k0."""
    return tl.load(s_ptr + (rows // GROUP_N) * stride_sn + (k0 // GROUP_K) * stride_sk, mask=row_ok, other=0.0)


@triton.jit
def row_weight_factor(s_ptr, gs_ptr, rows, row_ok, stride_sn, WFMT: tl.constexpr,
                      SFMT: tl.constexpr, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr, HAS_GLOBAL: tl.constexpr):
    """The weight factor applied once to the accumulator, [1, BLOCK_N]: a scale that spans K (per
    tensor or per output row), times the global scale (nvfp4), times what _group_scale left over.
    1 where the scales were K-grouped."""
    f = tl.full((1, rows.shape[0]), 1.0, tl.float32)
    if WFMT == 3 and SFMT == 2 and GROUP_K > 0:
        f = f * E4M3_E2M1_REST
    if GROUP_K == 0:
        if GROUP_N == 0:
            f = f * scale_values(tl.load(s_ptr), SFMT)
        else:
            f = f * scale_values(tl.load(s_ptr + (rows // GROUP_N) * stride_sn, mask=row_ok, other=0), SFMT)[None, :]
    if HAS_GLOBAL:
        f = f * tl.load(gs_ptr)
    return f
