"""Each CUDA experts backend against the float64 spec at real model shapes, bf16."""

import copy

import pytest
import torch

import moekit
from moekit.activations import GateUpLayout, parse_activation
from moekit.experts import ExpertWeights, ReferenceExperts, TorchGroupedMMExperts, TritonExperts
from tolerance import assert_close_to_reference

SHAPES = {
    # name: (E, k, H, I, activation, bias, layout)
    "qwen3-30b-a3b": (128, 8, 2048, 768, "silu", False, "concatenated"),
    "mixtral-8x7b": (8, 2, 4096, 14336, "silu", False, "concatenated"),
    "gpt-oss-20b": (32, 4, 2880, 2880, "swigluoai", True, "interleaved"),
    "deepseek-v3": (256, 8, 7168, 2048, "silu", False, "concatenated"),
}


def make(shape_name, tokens):
    E, k, H, I, act, bias, layout = SHAPES[shape_name]
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(tokens, H, device=dev, dtype=dt)
    w13 = (torch.randn(E, 2 * I, H, device=dev) / H**0.5).to(dt)
    w2 = (torch.randn(E, H, I, device=dev) / I**0.5).to(dt)
    b13 = (0.1 * torch.randn(E, 2 * I, device=dev)).to(dt) if bias else None
    b2 = (0.1 * torch.randn(E, H, device=dev)).to(dt) if bias else None
    w, ids = moekit.route(torch.randn(tokens, E, device=dev), k)
    return x, ExpertWeights(w13, w2, b13, b2), w, ids, parse_activation(act), GateUpLayout(layout)


@pytest.mark.parametrize("tokens", [1, 64, 1024])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("backend", [ReferenceExperts, TorchGroupedMMExperts, TritonExperts])
def test_backend_matches_spec(backend, shape_name, tokens):
    x, weights, w, ids, act, layout = make(shape_name, tokens)
    out = backend().apply(x, w, ids, weights, act, layout).to(x.dtype)
    ref = moekit.fused_moe_spec(x, weights.w13, weights.w2, w, ids, act, weights.w13_bias, weights.w2_bias,
                                gate_up_layout=layout)
    assert_close_to_reference(out, ref, torch.bfloat16)


def test_layer_on_cuda_chooses_triton_and_matches_spec():
    layer = moekit.MoE(128, 8, 2048, 768, dtype=torch.bfloat16, device="cuda", shared_intermediate_size=768)
    assert layer.explain().backend == "triton", str(layer.explain())
    x = torch.randn(4, 33, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
        tokens = x.reshape(-1, 2048)
        w, ids = layer.route(tokens)
        ref = moekit.fused_moe_spec(tokens, layer.w13, layer.w2, w, ids)
        ref = ref + copy.deepcopy(layer.shared_experts).double()(tokens.double())
    assert_close_to_reference(out.reshape(-1, 2048), ref, torch.bfloat16)
