"""The fused Triton routing kernel against moekit.route's PyTorch path on CUDA: 10,000 rows of each
routing style and logits dtype, with the styles and the comparison of tests/test_routing_kernel.py
(which runs the same check on the CPU under Triton's interpreter)."""

import pytest
import torch

import moekit
import test_routing_kernel as cpu  # tests/ is on sys.path (conftest)
from moekit.triton_ops import routing_kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("style", cpu.STYLES)
def test_matches_torch(style, dtype, monkeypatch):
    cpu.check_style(style, dtype, cpu.ROWS, "cuda", monkeypatch)


@pytest.mark.parametrize("rows", [0, 1, 3, 100_003])  # the last: many programs, a partial last one
def test_token_counts(rows, monkeypatch):
    cpu.check_style("deepseek_v3", torch.float32, rows, "cuda", monkeypatch)
    cpu.check_style("qwen3_softmax_renorm", torch.bfloat16, rows, "cuda", monkeypatch)


def test_route_uses_the_kernel_on_cuda(monkeypatch):
    monkeypatch.delenv("MOEKIT_ROUTING", raising=False)
    calls = []
    impl = routing_kernel._fused_route_impl
    monkeypatch.setattr(routing_kernel, "_fused_route_impl", lambda *args: calls.append(1) or impl(*args))
    moekit.route(torch.randn(5, 64, device="cuda"), 8)
    assert calls == [1]


def test_captures_in_a_cuda_graph(monkeypatch):
    monkeypatch.delenv("MOEKIT_ROUTING", raising=False)
    logits, top_k, kwargs = cpu.make_inputs("deepseek_v3", 64, torch.float32, "cuda", seed=3)
    moekit.route(logits, top_k, **kwargs)  # compiles the kernel outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        weights, ids = moekit.route(logits, top_k, **kwargs)
    logits.copy_(torch.randn_like(logits))
    graph.replay()
    torch.cuda.synchronize()
    expected_weights, expected_ids = moekit.route(logits, top_k, **kwargs)
    assert torch.equal(ids, expected_ids) and torch.equal(weights, expected_weights)
