"""moekit.MoE against the float64 spec: routing by the layer, experts and shared experts in fp64."""

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import moekit
from tolerance import assert_close_to_reference


def layer_spec(layer: moekit.MoE, x: torch.Tensor) -> torch.Tensor:
    """The layer's output computed in float64 from its own parameters and routing."""
    tokens = x.reshape(-1, layer.hidden_size)
    topk_weights, topk_ids = layer.route(tokens)
    out = moekit.fused_moe_spec(tokens, layer.w13, layer.w2, topk_weights, topk_ids, layer.activation,
                                layer.w13_bias, layer.w2_bias, gate_up_layout=layer.gate_up_layout,
                                apply_router_weight_on_input=layer.apply_router_weight_on_input)
    if layer.shared_experts is not None:
        shared64 = copy.deepcopy(layer.shared_experts).double()
        out = out + shared64(tokens.double())
    return out.reshape(x.shape)


CASES = [
    # kwargs of moekit.MoE beyond (E, k, H, I) -- path exercised
    dict(),  # softmax top-k, silu
    dict(shared_intermediate_size=24),  # DeepSeek/Qwen2 shared expert
    dict(shared_intermediate_size=24, shared_expert_gate=True),  # Qwen2-MoE sigmoid shared gate
    dict(routing=moekit.RoutingConfig(scoring=moekit.Scoring.SIGMOID, num_groups=4, topk_groups=2,
                                      correction_bias=True, routed_scaling_factor=2.5)),  # DeepSeek-V3
    dict(activation="swigluoai", expert_bias=True, router_bias=True, gate_up_layout="interleaved",
         routing="topk_softmax"),  # gpt-oss
    dict(activation="relu2"),  # no gate
    dict(activation="gelu", routing=moekit.RoutingConfig(renormalize=False)),  # OLMoE-like routing
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kwargs", CASES)
def test_layer_matches_spec(kwargs, dtype):
    layer = moekit.MoE(16, 4, 40, 28, dtype=dtype, device="cpu", **kwargs)
    if layer.correction_bias is not None:
        layer.correction_bias.normal_(std=0.2)
    x = torch.randn(3, 11, 40, dtype=dtype)
    with torch.no_grad():
        assert_close_to_reference(layer(x), layer_spec(layer, x), dtype)


def test_llama4_style_layer():
    layer = moekit.MoE(16, 1, 32, 24, routing="topk_sigmoid", shared_intermediate_size=24,
                       apply_router_weight_on_input=True, dtype=torch.float32, device="cpu")
    x = torch.randn(21, 32)
    with torch.no_grad():
        assert_close_to_reference(layer(x), layer_spec(layer, x), torch.float32)


@given(tokens=st.integers(0, 300), experts=st.integers(1, 64), data=st.data())
def test_layer_hypothesis(tokens, experts, data):
    top_k = data.draw(st.integers(1, min(8, experts)))
    hidden = data.draw(st.integers(1, 40).filter(lambda n: n % 16))
    inter = data.draw(st.integers(1, 40).filter(lambda n: n % 16))
    layer = moekit.MoE(experts, top_k, hidden, inter, dtype=torch.float32, device="cpu")
    x = torch.randn(tokens, hidden)
    with torch.no_grad():
        assert_close_to_reference(layer(x), layer_spec(layer, x), torch.float32)


def test_input_shapes_and_empty_batch():
    layer = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    x3 = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x3), layer(x3.reshape(10, 16)).reshape(2, 5, 16))
        assert layer(torch.randn(0, 16)).shape == (0, 16)


def test_explain_names_backend_and_reasons():
    layer = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    explanation = layer.explain()
    assert explanation.backend == "reference"
    text = str(explanation)
    assert "reference" in text and "chosen" in text and "E=8 top_k=2" in text
    rows = explanation.selection.table()
    assert [r[0] for r in rows] == [b.name for b in moekit.oracle.oracle_for("none").priority]


def test_backend_request_by_argument_and_environment(monkeypatch):
    with pytest.raises(moekit.BackendUnavailableError, match="unknown experts backend 'triton-fast'"):
        moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu", backend="triton-fast")
    monkeypatch.setenv("MOEKIT_BACKEND", "nope")
    with pytest.raises(moekit.BackendUnavailableError, match="unknown experts backend 'nope'"):
        moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    monkeypatch.setenv("MOEKIT_BACKEND", "reference")
    layer = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    assert layer.explain().selection.requested == "reference"


def test_move_and_load_recompose_the_kernel():
    layer = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    layer.to(torch.float64)
    assert layer.kernel.weights.w13.dtype == torch.float64
    assert layer.explain().problem.dtype == torch.float64
    other = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    other.load_state_dict(layer.float().state_dict())
    x = torch.randn(9, 16)
    with torch.no_grad():
        torch.testing.assert_close(other(x), layer(x))


def test_kernel_reads_the_layers_own_parameters():
    layer = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    assert layer.kernel.weights.w13 is layer.w13
    x = torch.randn(6, 16)
    with torch.no_grad():
        before = layer(x)
        layer.w2.mul_(2)
        torch.testing.assert_close(layer(x), 2 * before)


def test_forward_can_return_its_routing():
    layer = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="cpu")
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        out, (weights, ids) = layer(x, return_routing=True)
        torch.testing.assert_close(out, layer(x))
        expected_weights, expected_ids = layer.route(x.reshape(-1, 16))
    assert torch.equal(ids, expected_ids) and torch.equal(weights, expected_weights)


def test_router_dtype_runs_the_router_in_fp32():
    layer = moekit.MoE(32, 4, 64, 16, dtype=torch.bfloat16, device="cpu", router_dtype=torch.float32)
    x = torch.randn(200, 64, dtype=torch.bfloat16)
    logits32 = x.float() @ layer.router.weight.float().t()
    expected = moekit.route(logits32, 4)
    got = layer.route(x)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])
    # In bf16 the logits round differently, so the fp32 router is a real difference.
    assert not torch.equal(moekit.route(layer.router(x), 4)[0], expected[0])


def test_layer_built_on_meta_composes_only_once_real():
    layer = moekit.MoE(8, 2, 16, 12, dtype=torch.float32, device="meta")
    assert "kernel" not in layer.__dict__
    layer.to_empty(device="cpu")
    assert layer.explain().backend == "reference"


def test_load_hf_state_dict_reads_per_expert_layout():
    source = moekit.MoE(4, 2, 16, 12, dtype=torch.float32, device="cpu")
    sd = {"block.gate.weight": source.router.weight.detach().clone()}
    for e in range(4):
        gate, up = source.w13[e].detach().chunk(2)
        sd.update({f"block.experts.{e}.w1.weight": gate, f"block.experts.{e}.w3.weight": up,
                   f"block.experts.{e}.w2.weight": source.w2[e].detach()})
    target = moekit.MoE(4, 2, 16, 12, dtype=torch.float32, device="cpu")
    moekit.load_hf_state_dict(target, sd, prefix="block.")
    x = torch.randn(10, 16)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    del sd["block.experts.3.w2.weight"]
    with pytest.raises(ValueError, match="experts.3.w2.weight"):
        moekit.load_hf_state_dict(target, sd, prefix="block.")
