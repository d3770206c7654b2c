"""Number formats of the quant schemes, in one place: 4-bit packing, e2m1 (fp4) values, e8m0 and
e4m3 scales, and the integer ranges. Every scheme, loader and reference goes through these, and
tests check them against the formats' own definitions (OCP MX spec, NVIDIA nvfp4, IEEE-like fp8).

moekit's packed layout: two 4-bit codes per uint8 along the input (K) dimension, the even column
in the low nibble. Checkpoint layouts (compressed-tensors int32 words, gpt-oss blocks) are turned
into this one by their loaders.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
INT8_MAX = 127
UINT4_MIDPOINT = 8  # symmetric int4 stores q + 8 in an unsigned nibble
E2M1_MAX = 6.0
E8M0_BIAS = 127
E8M0_NAN = 255

# The 16 e2m1 codes (sign, 2 exponent bits, 1 mantissa bit; bias 1; no inf/NaN).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes in 0..15 (any integer dtype) -> [..., K/2] uint8, even column in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"4-bit packing needs an even last dimension, got {tuple(codes.shape)}")
    c = codes.to(torch.uint8)
    if codes.numel() and (codes.min() < 0 or codes.max() > 15):
        raise ValueError("4-bit codes must lie in 0..15")
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] uint8 -> [..., K] uint8 codes 0..15 (inverse of pack_nibbles)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed 4-bit data must be uint8, got {packed.dtype}")
    low, high = packed & 0xF, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """e2m1 codes 0..15 -> float32 values."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    return table[codes.long()]


def float_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """float -> nearest e2m1 code (ties to the even mantissa, as round-to-nearest-even), saturating at ±6."""
    mags = torch.tensor(E2M1_VALUES[:8], dtype=torch.float32, device=x.device)
    a = x.float().abs().clamp(max=E2M1_MAX)
    # Midpoints between neighbours; a tie goes to the code with an even mantissa bit (even index).
    mids = (mags[1:] + mags[:-1]) / 2
    idx = torch.bucketize(a, mids)  # first code whose midpoint is >= a: ties land on the lower code
    tie = (idx < 7) & (a == mids[idx.clamp(max=6)])  # a exactly on the midpoint above code idx
    idx = torch.where(tie & (idx % 2 == 1), idx + 1, idx)
    sign = (x.float() < 0) | ((x.float() == 0) & torch.signbit(x.float()))
    return (idx + 8 * sign.long()).to(torch.uint8)


def e8m0_to_float(codes: torch.Tensor) -> torch.Tensor:
    """e8m0 scale codes (uint8) -> float32 2**(code - 127); 255 is NaN."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"e8m0 scales must be uint8, got {codes.dtype}")
    out = torch.exp2(codes.float() - E8M0_BIAS)
    return torch.where(codes == E8M0_NAN, torch.full_like(out, float("nan")), out)


def mx_scale_for(amax: torch.Tensor) -> torch.Tensor:
    """The OCP MX shared scale of a block with absolute maximum ``amax``: 2**(floor(log2 amax) - 2)
    (2 = the largest e2m1 exponent), as an e8m0 code; an all-zero block gets the smallest scale."""
    exp = torch.floor(torch.log2(amax.float().clamp(min=2.0**-126))) - 2
    return (exp + E8M0_BIAS).clamp(0, 254).to(torch.uint8)


def divide(x: torch.Tensor, number: float) -> torch.Tensor:
    """x / number rounded once, on every device. CUDA turns a division by a Python number into a
    multiplication by its reciprocal, one ulp off at times: a scale one ulp off moves values that
    sit exactly between two codes (bf16 activations do, often) to the other code."""
    # torch.full fills on the device: no host-to-device copy, so this stays CUDA-graph capturable
    return x / torch.full((), number, dtype=x.dtype, device=x.device)


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """Saturating cast to e4m3fn (a plain cast turns out-of-range values into NaN)."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
