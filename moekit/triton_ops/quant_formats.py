"""moekit's quant number formats (quant/formats.py) as Triton device functions: unpacking 4-bit
codes, e2m1 / e8m0 / e4m3 values from their bits, and rounding onto the int8 and e4m3 grids.

Everything is integer or exact fp32 arithmetic, so it runs the same on any GPU (e4m3 scales are read
as bytes: no fp8 instructions needed for weight-only schemes) and in Triton's CPU interpreter, whose
own fp32 -> fp8 cast rounds differently from the hardware's (docs/facts.md): rounding onto the e4m3
grid first makes the final cast exact everywhere.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

FP8_MAX = tl.constexpr(448.0)  # largest finite e4m3fn value
INT8_MAX = tl.constexpr(127.0)  # symmetric int8 range


@triton.jit
def unpack_nibbles_nk(packed):
    """[BN, BK/2] bytes -> [BN, BK] codes 0..15 in column order (even column in the low nibble)."""
    return tl.interleave(packed & 0xF, packed >> 4)


E2M1_UNBIAS = tl.constexpr(8.507059173023462e37)  # 2**126: e2m1_scaled_down(c) * 2**126 == e2m1 value
# An e4m3 scale (<= 448) times 2**126 overflows fp32: e4m3 scales of e2m1 codes take 2**117 into their
# exponent and leave 2**9 to the epilogue (tile values are then 2**-9 of the weights: exact in bf16).
E4M3_E2M1_SHIFT = tl.constexpr(117)
E4M3_E2M1_SCALE = tl.constexpr(2.0**117)  # the same factor, for e4m3 scales the hardware converts
E4M3_E2M1_REST = tl.constexpr(512.0)  # 2**(126 - 117)
INT_MAGIC = tl.constexpr(8388608.0)  # 2**23: the float with bits 0x4B000000 + n is 2**23 + n (0 <= n < 2**23)


@triton.jit
def e2m1_scaled_down(codes):
    """e2m1 codes 0..15 (int32) -> fp32 value * 2**-126, in three integer ops and no conversion:
    the code's exponent and mantissa bits placed at the top of an fp32 mantissa/exponent make a
    number 2**126 times too small (exponent 0 lands on fp32 subnormals, which Triton does not
    flush). The caller folds 2**126 into the scale it multiplies by anyway."""
    return (((codes & 7) << 22) | ((codes & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def uint4_minus(codes, zero):
    """Codes 0..15 (int32) minus a zero point (fp32), with no int-to-float conversion (a quarter-rate
    instruction on the GPU): bits 0x4B000000 | c are the float 2**23 + c."""
    return (codes | 0x4B000000).to(tl.float32, bitcast=True) - (INT_MAGIC + zero)


@triton.jit
def int8_minus(codes, zero):
    """Signed codes -128..127 (int32) minus a zero point (fp32), as uint4_minus (shifted by 128)."""
    return (codes + 0x4B000080).to(tl.float32, bitcast=True) - (INT_MAGIC + 128.0 + zero)


@triton.jit
def e8m0_values(codes):
    """e8m0 codes (uint8 as int32) -> fp32 2**(code - 127); code 0 is 2**-127 (subnormal), 255 NaN."""
    value = (codes << 23).to(tl.float32, bitcast=True)
    value = tl.where(codes == 0, 5.877471754111438e-39, value)
    return tl.where(codes == 255, float("nan"), value)


@triton.jit
def e4m3_values(codes, EXP_SHIFT: tl.constexpr = 0):
    """e4m3fn bytes (int32 0..255) -> fp32 value * 2**EXP_SHIFT, from the bits (no fp8 conversion
    instruction needed; the shift scales for free: it is added to the exponent)."""
    exp = (codes >> 3) & 15
    man = codes & 7
    normal = ((exp + 120 + EXP_SHIFT) << 23 | man << 20).to(tl.float32, bitcast=True)  # 2**(e-7) * (1 + m/8)
    subnormal = man.to(tl.float32) * 0.001953125 * (2.0**EXP_SHIFT)  # m * 2**-9
    mag = tl.where(exp == 0, subnormal, normal)
    mag = tl.where((exp == 15) & (man == 7), float("nan"), mag)
    return tl.where((codes & 128) != 0, -mag, mag)


@triton.jit
def round_half_even(x):
    """Round fp32 to the nearest integer, ties to even (torch.round), for |x| < 2**22."""
    r = tl.floor(x)
    d = x - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)


@triton.jit
def round_to_e4m3(x):
    """fp32 in [-448, 448] -> the nearest e4m3fn value (ties to even), still fp32: the spacing is
    2**(e - 3) for exponent e >= -6, and 2**-9 below (subnormals)."""
    exp = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exp = tl.maximum(exp, -6)
    ulp = ((exp - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv_ulp = ((127 - exp + 3) << 23).to(tl.float32, bitcast=True)
    r = round_half_even(x * inv_ulp) * ulp
    return tl.where(r == 0.0, x * 0.0, r)  # keep the sign of a zero (torch's cast gives -0.0)


@triton.jit
def divide(x, scale, ON_GPU: tl.constexpr):
    """x / scale correctly rounded (as quant.formats.divide). On the GPU by the reciprocal and one
    fused correction, 3 instructions where div.rn takes ~10 and a slow-path branch: with r the
    correctly rounded 1 / scale and q within an ulp of the quotient, q + (x - q * scale) * r in
    fused multiply-adds is the correctly rounded quotient (Markstein's theorem). Zeros keep their
    sign and an overflowing quotient its infinity from q. The interpreter divides (no true fma)."""
    if ON_GPU:
        r = tl.math.div_rn(1.0, scale)  # (scale's own shape: per row or group, before broadcasting)
        q = x * r
        exact = tl.fma(tl.fma(-q, scale, x), r, q)
        return tl.where((x != 0.0) & (tl.abs(q) < 3.0e38), exact, q)
    else:
        return tl.math.div_rn(x, scale)


@triton.jit
def quantize_values(x, scale, IS_FP8: tl.constexpr, ON_GPU: tl.constexpr = False):
    """x / scale saturated and rounded onto the fp8 e4m3 or int8 grid, as fp8 / int8 codes
    (quant.dequant.quantize_activations: division, not a reciprocal multiply). ON_GPU: the GPU's
    own conversions round (fp32 -> e4m3 and rint: both to nearest, ties to even, as the grid
    rounding by hand that the interpreter needs), ~25 instructions per element fewer."""
    q = divide(x, scale, ON_GPU)
    if IS_FP8:
        q = tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)
        if not ON_GPU:
            q = round_to_e4m3(q)
        return q.to(tl.float8e4nv)
    else:
        if ON_GPU:
            q = libdevice.rint(q)
        else:
            q = round_half_even(q)
        return tl.minimum(tl.maximum(q, -INT8_MAX), INT8_MAX).to(tl.int8)
