"""paired_dequant.py's inline PTX on the GPU, bit for bit against the formats' definitions (the CPU
tests run its fp32 emulation and the PTX text through tests/ptx_sim.py: tests/test_paired_dequant.py).
These runs are also what checks the simulator."""

import pytest
import torch

import test_paired_dequant as cpu  # tests/ is on sys.path (conftest)
from moekit.triton_ops.paired_dequant import PAIRED_PTX, PAIRED_PTX_FOLDED


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("has_zero", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_uint4_pairs_ptx(dtype, has_zero, grouped):
    stored, scale, zero = cpu.uint4_inputs("cuda")
    lo, hi = cpu.run_pairs(stored, scale, zero, dtype, PAIRED_PTX.value, has_zero=has_zero, grouped=grouped)
    want_lo, want_hi = cpu.uint4_expected(stored, scale, zero, dtype, has_zero, grouped)
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)


@pytest.mark.parametrize("sfmt, folded", [(1, False), (1, True), (2, False)])  # e8m0 (mxfp4), e4m3 (nvfp4)
def test_e2m1_pairs_ptx(sfmt, folded):
    stored = torch.randint(0, 256, (cpu.ROWS, cpu.COLS), dtype=torch.uint8, device="cuda")
    scale = cpu.e2m1_scales(sfmt, folded).cuda()
    mode = PAIRED_PTX_FOLDED if folded else PAIRED_PTX
    lo, hi = cpu.run_pairs(stored, scale, scale, torch.bfloat16, mode.value, e2m1=True, sfmt=sfmt)
    want_lo, want_hi = cpu.e2m1_expected(stored, scale, torch.bfloat16, sfmt)
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("has_zero", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_int8_pairs_ptx(dtype, has_zero, grouped):
    codes, scale, zero = cpu.int8_inputs("cuda", dtype)
    got = cpu.run_int8(codes, scale, zero, dtype, PAIRED_PTX.value, has_zero, grouped)
    assert torch.equal(got, cpu.int8_expected(codes, scale, zero, dtype, has_zero, grouped))
