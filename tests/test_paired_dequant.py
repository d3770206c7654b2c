"""paired_dequant.py: a byte of two 4-bit codes, or two int8 codes, made into their two 16-bit
values, against the formats' definitions computed in torch (float64, one rounding to the 16-bit
dtype), bit for bit.

On the CPU the interpreter runs the fp32 emulation of the pair numerics (fp16: the interpreter's
fp32 -> bf16 casts truncate, docs/facts.md), and the inline PTX itself through tests/ptx_sim.py
(bf16 too, with scales exact in bf16 for that reason). tests_gpu/test_paired_dequant_gpu.py runs
the PTX on the GPU."""

import pytest
import torch
import triton
import triton.language as tl

import moekit
from moekit.quant import METHODS, formats
import ptx_sim
from moekit.quant.code_order import to_mma_order
from moekit.triton_ops.paired_dequant import (E2M1_WORD_BF16, E2M1_WORD_BF16_FOLDED, PAIRED_EMULATED, PAIRED_PTX,
                                              PAIRED_PTX_FOLDED, e2m1_folds, e2m1_operands, paired_e2m1, paired_int8,
                                              paired_uint4, split_pairs, uint4_operands, uint4_word_ptx, word_ptx)
from moekit.triton_ops.weight_only_swapped import _runs_in_plain_order, two_group_scales

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
        lo, hi = paired_e2m1(stored, s, SFMT, MODE, lo_ptr.dtype.element_ty)
    else:
        lo, hi = paired_uint4(stored, s, tl.load(z_ptr + r), HAS_ZERO, GROUPED, SFMT, MODE, lo_ptr.dtype.element_ty)
    tl.store(lo_ptr + offs, lo)
    tl.store(hi_ptr + offs, hi)


@triton.jit
def _in_operand_order(x):
    """[16, COLS] -> the order in which Triton packs four bytes of the wgmma operand into a register
    (row r byte 2i, row r + 8 byte 2i, row r byte 2i + 1, row r + 8 byte 2i + 1), so that the
    simulator's packs of four consecutive elements are the GPU's."""
    cols: tl.constexpr = x.shape[1]
    return tl.permute(tl.reshape(x, (2, 8, cols // 4, 2, 2)), (1, 2, 3, 4, 0))  # [r % 8, word, i, byte, r // 8]


@triton.jit
def _from_operand_order(x, COLS: tl.constexpr):
    return tl.reshape(tl.permute(x, (4, 0, 1, 2, 3)), (16, COLS))


@triton.jit
def _word_pairs_kernel(b_ptr, s_ptr, z_ptr, lo_ptr, hi_ptr, ROWS: tl.constexpr, COLS: tl.constexpr,
                       E2M1: tl.constexpr, HAS_ZERO: tl.constexpr, GROUPED: tl.constexpr, SFMT: tl.constexpr,
                       FOLDED: tl.constexpr):
    """As the swapped loop reads codes in MMA order: four bytes of the operand per PTX call, then
    plain order."""
    r = tl.arange(0, ROWS)
    offs = r[:, None] * COLS + tl.arange(0, COLS)[None, :]
    stored = tl.load(b_ptr + offs)
    s = tl.load(s_ptr + r)
    dtype = lo_ptr.dtype.element_ty
    full = (ROWS, COLS)
    if E2M1:
        FOLDS: tl.constexpr = e2m1_folds(SFMT, PAIRED_PTX_FOLDED if FOLDED else PAIRED_PTX)
        a, b = e2m1_operands(ROWS, s, SFMT, dtype, FOLDS)
        a = _in_operand_order(tl.broadcast_to(a, full))
        b = _in_operand_order(tl.broadcast_to(b, full))
        if FOLDS:
            pairs = word_ptx(E2M1_WORD_BF16_FOLDED, _in_operand_order(stored), a, b)
        else:
            pairs = word_ptx(E2M1_WORD_BF16, _in_operand_order(stored), a, b)
    else:
        a, b = uint4_operands(ROWS, s, tl.load(z_ptr + r), HAS_ZERO, GROUPED, SFMT, dtype)
        pairs = uint4_word_ptx(_in_operand_order(stored), _in_operand_order(tl.broadcast_to(a, full)),
                               _in_operand_order(tl.broadcast_to(b, full)), GROUPED, dtype)
    lo, hi = split_pairs(_runs_in_plain_order(_from_operand_order(pairs, COLS)), dtype)
    tl.store(lo_ptr + offs, lo)
    tl.store(hi_ptr + offs, hi)


@triton.jit
def _int8_kernel(c_ptr, s_ptr, z_ptr, out_ptr, ROWS: tl.constexpr, COLS: tl.constexpr, HAS_ZERO: tl.constexpr,
                 GROUPED: tl.constexpr, MODE: tl.constexpr):
    r = tl.arange(0, ROWS)
    offs = r[:, None] * COLS + tl.arange(0, COLS)[None, :]
    w = paired_int8(tl.load(c_ptr + offs), tl.load(s_ptr + r), tl.load(z_ptr + r), HAS_ZERO, GROUPED, MODE,
                    out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, w)


def run_int8(codes, scale, zero, dtype, mode, has_zero, grouped):
    out = torch.full(codes.shape, float("nan"), dtype=dtype, device=codes.device)
    _int8_kernel[(1,)](codes, scale, zero, out, ROWS, COLS, has_zero, grouped, mode)
    return out


def int8_inputs(device="cpu", dtype=torch.float16):
    """Every int8 code (twice over), zero points from the whole int8 range, scales not exact in
    ``dtype`` (bf16 ones exact in bf16 under the interpreter, whose fp32 -> bf16 casts truncate)."""
    codes = torch.arange(-128, 128, dtype=torch.int16)[torch.randperm(256)].repeat(2).reshape(ROWS, COLS)
    scale = torch.rand(ROWS) * 0.02 + 1e-3
    if dtype == torch.bfloat16 and device == "cpu":
        scale = scale.bfloat16().float()
    zero = torch.randint(-128, 128, (ROWS,), dtype=torch.int8)
    return codes.to(torch.int8).to(device), scale.to(device), zero.to(device)


def int8_expected(codes, scale, zero, dtype, has_zero, grouped):
    """(code - zero point) times the scale rounded to ``dtype``, rounded once to ``dtype``."""
    v = codes.double() - (zero.double()[:, None] if has_zero else 0.0)
    return (v * (scale.to(dtype).double()[:, None] if grouped else 1.0)).to(dtype)


def run_pairs(stored, scale, zero, dtype, mode, e2m1=False, has_zero=False, grouped=True, sfmt=0):
    lo = torch.full(stored.shape, float("nan"), dtype=dtype, device=stored.device)
    hi = torch.full_like(lo, float("nan"))
    _pairs_kernel[(1,)](stored, scale, zero, lo, hi, ROWS, COLS, e2m1, has_zero, grouped, sfmt, mode)
    return lo, hi


def run_word_pairs(stored, scale, zero, dtype, e2m1=False, has_zero=False, grouped=True, sfmt=0, folded=False):
    """Plain bytes ``stored`` put in MMA order (quant/code_order.py) and dequantized as words."""
    lo = torch.full(stored.shape, float("nan"), dtype=dtype, device=stored.device)
    hi = torch.full_like(lo, float("nan"))
    _word_pairs_kernel[(1,)](to_mma_order(stored), scale, zero, lo, hi, ROWS, COLS, e2m1, has_zero, grouped, sfmt,
                             folded)
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


@pytest.mark.parametrize("has_zero", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_int8_pairs_emulated_fp16(has_zero, grouped):
    codes, scale, zero = int8_inputs()
    got = run_int8(codes, scale, zero, torch.float16, PAIRED_EMULATED.value, has_zero, grouped)
    assert torch.equal(got, int8_expected(codes, scale, zero, torch.float16, has_zero, grouped))


# The inline PTX, run by tests/ptx_sim.py: what the GPU executes, instruction by instruction.

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("has_zero", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_int8_pairs_ptx_simulated(dtype, has_zero, grouped):
    codes, scale, zero = int8_inputs(dtype=dtype)
    with ptx_sim.patched_interpreter():
        got = run_int8(codes, scale, zero, dtype, PAIRED_PTX.value, has_zero, grouped)
    assert torch.equal(got, int8_expected(codes, scale, zero, dtype, has_zero, grouped))


def every_byte():
    """[ROWS, COLS] bytes of codes: every byte value, twice, shuffled."""
    return torch.arange(256, dtype=torch.int16)[torch.randperm(256)].repeat(2).reshape(ROWS, COLS).to(torch.uint8)


def e2m1_scales(sfmt, folded=False):
    """e8m0 bytes around 2**0 and byte 0 (2**-127, subnormal in bf16; with ``folded``, those of at
    most 2, the largest included), or finite e4m3 bytes, subnormals included (0x7F and 0xFF are NaN)."""
    if sfmt == 1:
        scale = torch.randint(110, 129 if folded else 140, (ROWS,), dtype=torch.uint8)
        scale[3] = 0
        if folded:
            scale[5] = 128
        return scale
    return torch.randint(0, 0x7F, (ROWS,), dtype=torch.uint8)


def simulated_pairs(words, stored, scale, zero, dtype, folded=False, **kwargs):
    """The PTX run by the simulator: a byte per call in plain order, or (``words``) the codes put in
    MMA order and four bytes per call (run_word_pairs); ``folded``: the PTX that takes e2m1's 2**126
    from the e8m0 scale."""
    with ptx_sim.patched_interpreter():
        if words:
            return run_word_pairs(stored, scale, zero, dtype, folded=folded, **kwargs)
        return run_pairs(stored, scale, zero, dtype, (PAIRED_PTX_FOLDED if folded else PAIRED_PTX).value, **kwargs)


@pytest.mark.parametrize("words", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("has_zero", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_uint4_pairs_ptx_simulated(words, dtype, has_zero, grouped):
    stored, scale, zero = uint4_inputs()
    if dtype == torch.bfloat16:
        scale = scale.bfloat16().float()  # the interpreter's fp32 -> bf16 casts truncate
    lo, hi = simulated_pairs(words, stored, scale, zero, dtype, has_zero=has_zero, grouped=grouped)
    want_lo, want_hi = uint4_expected(stored, scale, zero, dtype, has_zero, grouped)
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)


@pytest.mark.parametrize("words", [False, True])
@pytest.mark.parametrize("sfmt, folded", [(1, False), (1, True), (2, False)])  # e8m0 (mxfp4), e4m3 (nvfp4)
def test_e2m1_pairs_ptx_simulated(words, sfmt, folded):
    stored, scale = every_byte(), e2m1_scales(sfmt, folded)
    lo, hi = simulated_pairs(words, stored, scale, scale, torch.bfloat16, folded, e2m1=True, sfmt=sfmt)
    want_lo, want_hi = e2m1_expected(stored, scale, torch.bfloat16, sfmt)
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)


@triton.jit
def _two_group_kernel(b_ptr, w_ptr, lo_ptr, hi_ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """As the swapped loop reads nvfp4 codes in MMA order: a row's 32 bytes are two runs of two
    16-code groups, scaled per byte by the groups of the row's scale word (two_group_scales)."""
    r = tl.arange(0, ROWS)
    offs = r[:, None] * COLS + tl.arange(0, COLS)[None, :]
    scale = two_group_scales(tl.load(w_ptr + r), COLS, 2, tl.bfloat16)
    pairs = word_ptx(E2M1_WORD_BF16_FOLDED, _in_operand_order(tl.load(b_ptr + offs)), _in_operand_order(scale),
                     _in_operand_order(scale))
    lo, hi = split_pairs(_runs_in_plain_order(_from_operand_order(pairs, COLS)), tl.bfloat16)
    tl.store(lo_ptr + offs, lo)
    tl.store(hi_ptr + offs, hi)


def test_two_group_runs_ptx_simulated():
    # nvfp4 codes in MMA order (16-byte runs of two 16-code groups): each pair takes its own group's
    # e4m3 scale; plain byte b of a row (codes 2b, 2b + 1) belongs to group b // 8.
    stored = every_byte()
    scales = torch.randint(0, 0x7F, (ROWS, 4), dtype=torch.uint8)  # finite e4m3, subnormals included
    lo = torch.full(stored.shape, float("nan"), dtype=torch.bfloat16)
    hi = torch.full_like(lo, float("nan"))
    with ptx_sim.patched_interpreter():
        _two_group_kernel[(1,)](to_mma_order(stored), scales.view(torch.int32).reshape(ROWS), lo, hi, ROWS, COLS)
    per_byte = scales.repeat_interleave(8, dim=1)  # [ROWS, COLS]: byte b's group scale
    s = per_byte.view(torch.float8_e4m3fn).double() / 512
    want_lo, want_hi = ((formats.e2m1_to_float(c).double() * s).to(torch.bfloat16) for c in (stored & 15, stored >> 4))
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)
    assert len(set(scales.flatten().tolist())) > 8  # the groups' scales differ: a wrong group would show


def test_the_simulated_ptx_catches_a_wrong_constant(monkeypatch):
    # The simulated checks can fail: the bf16 magic number off by one exponent step breaks them.
    from moekit.triton_ops import paired_dequant

    monkeypatch.setattr(paired_dequant, "_UINT4_BF16", paired_dequant._UINT4_BF16.value.replace("0x43004300",
                                                                                                   "0x43804380"))
    stored, scale, zero = uint4_inputs()
    with ptx_sim.patched_interpreter():
        lo, _hi = run_pairs(stored, scale, zero, torch.bfloat16, PAIRED_PTX.value, grouped=False)
    want_lo, _ = uint4_expected(stored, scale, zero, torch.bfloat16, False, False)
    assert not torch.equal(lo, want_lo)


def test_only_e8m0_scales_of_at_most_two_fold(monkeypatch):
    # The folded PTX takes e2m1's 2**126 into the scale pair, which overflows bf16 above scale 2: the
    # layer's Triton weights are marked once, at conversion, from the scales themselves.
    from moekit.quant.spec import ScaleFormat
    from moekit.triton_ops.quant_gemm import paired_mode

    monkeypatch.setenv("MOEKIT_BACKEND", "triton")
    torch.manual_seed(0)
    layer = moekit.MoE(4, 2, 64, 64, quant="mxfp4", dtype=torch.bfloat16, device="cpu")
    w13, w2 = torch.randn(4, 128, 64) / 8, torch.randn(4, 64, 64) / 8
    layer.set_expert_weights(w13, w2)
    assert layer.kernel.weights.w13.scales_at_most_two and layer.kernel.weights.w2.scales_at_most_two
    layer.set_expert_weights(w13, w2 * 64)  # w2's scales reach 2**3: byte 130
    assert int(layer.w2_scale.max()) > 128
    assert layer.kernel.weights.w13.scales_at_most_two and not layer.kernel.weights.w2.scales_at_most_two
    spec = METHODS["mxfp4"].spec
    assert spec.scale_format is ScaleFormat.E8M0
    assert paired_mode(spec, True, torch.bfloat16, True, True) == PAIRED_PTX_FOLDED.value
    assert paired_mode(spec, True, torch.bfloat16, True, False) == PAIRED_PTX.value
    assert paired_mode(METHODS["nvfp4"].spec, True, torch.bfloat16, True, True) == PAIRED_PTX.value  # e4m3
    monkeypatch.setenv("MOEKIT_BACKEND", "reference")
    layer.compose_kernel()
    assert not layer.kernel.weights.w13.scales_at_most_two
