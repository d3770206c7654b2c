"""experts_implementation="moekit" on transformers' FP8Experts on CUDA: moekit's Triton fp8-block128
kernel on the module's own codes and scales against the hand-written dequantize-and-loop (bf16)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integrations"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
hf = pytest.importorskip("test_hf_fp8_experts")


@pytest.mark.parametrize("tokens", [1, 64, 512])
def test_fp8_experts_on_cuda_use_the_triton_kernel(tokens):
    module = hf.make_fp8_experts().cuda()
    x = torch.randn(tokens, hf.H, device="cuda", dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(hf.E)[: hf.K] for _ in range(tokens)]).cuda()
    weights = torch.softmax(torch.randn(tokens, hf.K), -1).cuda()
    out = module(x, ids, weights)
    assert module._moekit_kernel[1].experts.name == "triton"
    ref = hf.expected(module.cpu(), x.cpu().float(), ids.cpu(), weights.cpu())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert ((out.double().cpu() - ref).norm() / ref.norm()).item() <= 1e-2
