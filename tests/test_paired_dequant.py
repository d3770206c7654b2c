"""paired_dequant.py: a byte of two 4-bit codes made into its two 16-bit values, against the
formats' definitions computed in torch (float64, one rounding to the 16-bit dtype), bit for bit.

On the CPU the interpreter runs the fp32 emulation of the pair numerics (uint4, fp16: bf16 is wrong
in the interpreter, docs/facts.md); tests_gpu/test_paired_dequant_gpu.py runs the same checks on
the inline PTX, bf16 and fp16, uint4 and e2m1."""

import pytest
import torch
import triton
import triton.language as tl

from moekit.quant import formats
from moekit.triton_ops.paired_dequant import PAIRED_EMULATED, paired_e2m1, paired_uint4

ROWS, COLS = 16, 32


@triton.jit
def _pairs_kernel(b_ptr, s_ptr, z_ptr, lo_ptr, hi_ptr, ROWS: tl.constexpr, COLS: tl.constexpr,
                  E2M1: tl.constexpr, HAS_ZERO: tl.constexpr, GROUPED: tl.constexpr, SFMT: tl.constexpr,
                  MODE: tl.constexpr):
    r = tl.arange(0, ROWS)
    offs = r[:, None] * COLS + tl.arange(0, COLS)[None, :]
    stored = tl.load(b_ptr + offs)
    s = tl.load(s_ptr + r)
    if E2M1:
        lo, hi = paired_e2m1(stored, s, SFMT, lo_ptr.dtype.element_ty)
    else:
        lo, hi = paired_uint4(stored, s, tl.load(z_ptr + r), HAS_ZERO, GROUPED, SFMT, MODE, lo_ptr.dtype.element_ty)
    tl.store(lo_ptr + offs, lo)
    tl.store(hi_ptr + offs, hi)


def run_pairs(stored, scale, zero, dtype, mode, e2m1=False, has_zero=False, grouped=True, sfmt=0):
    lo = torch.full(stored.shape, float("nan"), dtype=dtype, device=stored.device)
    hi = torch.full_like(lo, float("nan"))
    _pairs_kernel[(1,)](stored, scale, zero, lo, hi, ROWS, COLS, e2m1, has_zero, grouped, sfmt, mode)
    return lo, hi


def uint4_expected(stored, scale, zero, dtype, has_zero, grouped):
    """(code - zero point, else 8) times the scale rounded to ``dtype``, rounded once to ``dtype``."""
    z = zero.double()[:, None] if has_zero else 8.0
    s = scale.to(dtype).double()[:, None] if grouped else 1.0
    codes = stored.long()
    return tuple(((c - z) * s).to(dtype) for c in (codes & 15, codes >> 4))


def e2m1_expected(stored, scale, dtype, sfmt):
    """The e2m1 value times the scale (e8m0 codes, or e4m3 bytes times 2**-9: the kernels' epilogue
    multiplies that back), rounded once to ``dtype``."""
    if sfmt == 1:
        s = formats.e8m0_to_float(scale).double()
    else:
        s = scale.view(torch.float8_e4m3fn).double() / 512
    return tuple((formats.e2m1_to_float(c).double() * s[:, None]).to(dtype)
                 for c in (stored & 15, stored >> 4))


def uint4_inputs(device="cpu"):
    stored = torch.randint(0, 256, (ROWS, COLS), dtype=torch.uint8, device=device)
    scale = torch.rand(ROWS, device=device) * 0.02 + 1e-3  # not exact in fp16 or bf16
    zero = torch.randint(0, 16, (ROWS,), dtype=torch.uint8, device=device)
    return stored, scale, zero


@pytest.mark.parametrize("has_zero", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_uint4_pairs_emulated_fp16(has_zero, grouped):
    stored, scale, zero = uint4_inputs()
    lo, hi = run_pairs(stored, scale, zero, torch.float16, PAIRED_EMULATED.value, has_zero=has_zero, grouped=grouped)
    want_lo, want_hi = uint4_expected(stored, scale, zero, torch.float16, has_zero, grouped)
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)


def test_the_scale_is_rounded_to_the_activation_dtype():
    # The pair numerics differ from the fp32 route in this one rounding (it would catch an fp32 scale).
    stored, scale, zero = uint4_inputs()
    lo, _hi = run_pairs(stored, scale, zero, torch.float16, PAIRED_EMULATED.value)
    codes = (stored.long() & 15) - 8
    fp32_scale = (codes * scale.double()[:, None]).to(torch.float16)
    assert not torch.equal(lo, fp32_scale)
