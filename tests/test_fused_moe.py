"""moekit.fused_moe against the float64 spec, over a grid and hypothesis-drawn cases."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import moekit
from moe_inputs import interleave_gate_up, make_inputs, run_fused, spec_of
from tolerance import assert_close_allowing_cancellation, assert_close_to_reference

GRID = [
    # tokens, experts, top_k, hidden, inter
    (1, 1, 1, 8, 8),  # one token, one expert: the smallest problem
    (0, 4, 2, 24, 20),  # no tokens: empty output, nothing launched
    (7, 5, 5, 13, 11),  # top_k == E, prime sizes
    (33, 64, 8, 40, 36),  # many experts, most get one or two rows
    (100, 8, 2, 72, 50),  # Mixtral-like routing, sizes not multiples of 16
    (3, 128, 8, 17, 9),  # more experts than token copies: most experts empty
]
ACTIVATIONS = ["silu", "gelu", "swigluoai", "relu2"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GRID)
def test_grid(shape, dtype):
    inp = make_inputs(*shape, dtype=dtype)
    assert_close_to_reference(run_fused(inp), spec_of(inp), dtype)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [False, True])
def test_activations_and_biases(activation, bias):
    inp = make_inputs(45, 6, 2, 30, 22, gated=activation != "relu2", bias=bias)
    assert_close_to_reference(run_fused(inp, activation), spec_of(inp, activation), torch.float32)


def test_swigluoai_interleaved_matches_concatenated():
    inp = make_inputs(20, 4, 2, 16, 10, bias=True)
    w13_il, b13_il = interleave_gate_up(inp)  # gpt-oss checkpoint layout: same math, other storage
    out = moekit.fused_moe(inp.x, w13_il, inp.w2, inp.topk_weights, inp.topk_ids, "swigluoai", b13_il,
                           inp.w2_bias, gate_up_layout="interleaved")
    assert_close_to_reference(out, spec_of(inp, "swigluoai"), torch.float32)


def test_swigluoai_clamps():
    # Large inputs drive gate and up past the 7.0 limit; the spec and the kernel must clamp alike.
    inp = make_inputs(16, 4, 2, 16, 12)
    inp.x *= 30
    out, ref = run_fused(inp, "swigluoai"), spec_of(inp, "swigluoai")
    unclamped = moekit.fused_moe_spec(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids,
                                      moekit.Activation(moekit.ActivationKind.SWIGLUOAI, limit=1e9))
    assert not torch.allclose(ref, unclamped)  # the clamp is really active in this case
    assert_close_to_reference(out, ref, torch.float32)


def test_apply_router_weight_on_input():
    inp = make_inputs(30, 8, 1, 24, 16)
    inp.topk_weights = torch.rand(30, 1) * 0.8 + 0.1  # Llama-4's sigmoid weights, not renormalized to 1
    out = run_fused(inp, apply_router_weight_on_input=True)
    assert_close_to_reference(out, spec_of(inp, apply_router_weight_on_input=True), torch.float32)
    # It is a different function from weighting the output (the activation is not linear).
    assert not torch.allclose(out.double(), spec_of(inp), rtol=1e-3)


def test_non_contiguous_inputs():
    inp = make_inputs(25, 6, 3, 20, 14)
    x_strided = torch.randn(25, 40)[:, ::2]
    x_strided.copy_(inp.x)
    w13_t = inp.w13.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major experts
    w2_t = inp.w2.transpose(1, 2).contiguous().transpose(1, 2)
    ids_t = inp.topk_ids.t().contiguous().t()
    weights_t = inp.topk_weights.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (x_strided, w13_t, w2_t, ids_t, weights_t))
    out = moekit.fused_moe(x_strided, w13_t, w2_t, weights_t, ids_t)
    assert_close_to_reference(out, spec_of(inp), torch.float32)


def test_int64_ids_accepted():
    inp = make_inputs(10, 4, 2, 8, 8)
    out = moekit.fused_moe(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids.long())
    assert_close_to_reference(out, spec_of(inp), torch.float32)


def test_only_routed_experts_contribute():
    # Poisoning the unused experts' weights must not change the result.
    inp = make_inputs(40, 16, 2, 12, 10, used_experts=3)
    clean = run_fused(inp)
    inp.w13[3:] = float("nan")
    inp.w2[3:] = float("nan")
    assert torch.equal(run_fused(inp), clean)


@given(
    tokens=st.integers(0, 300),
    experts=st.integers(1, 64),
    hidden=st.integers(1, 50).filter(lambda n: n % 16),
    inter=st.integers(1, 40).filter(lambda n: n % 16),
    data=st.data(),
)
def test_hypothesis_fp32(tokens, experts, hidden, inter, data):
    top_k = data.draw(st.integers(1, min(8, experts)), label="top_k")
    used = data.draw(st.integers(top_k, experts), label="used_experts")  # the rest get no tokens
    activation = data.draw(st.sampled_from(ACTIVATIONS), label="activation")
    bias = data.draw(st.booleans(), label="bias")
    inp = make_inputs(tokens, experts, top_k, hidden, inter, gated=activation != "relu2", bias=bias,
                      used_experts=used)
    if data.draw(st.booleans(), label="non_contiguous_x"):
        inp.x = torch.cat([inp.x, inp.x], dim=1)[:, :hidden] if hidden > 1 else inp.x.t().contiguous().t()
    # a token's k terms may cancel: the bound also grows with the terms' absolute magnitude
    magnitude = moekit.fused_moe_spec(inp.x.abs(), inp.w13.abs(), inp.w2.abs(), inp.topk_weights.abs(), inp.topk_ids,
                                      activation, None if inp.w13_bias is None else inp.w13_bias.abs(),
                                      None if inp.w2_bias is None else inp.w2_bias.abs())
    assert_close_allowing_cancellation(run_fused(inp, activation), spec_of(inp, activation), magnitude.abs(),
                                       torch.float32)


@given(tokens=st.integers(1, 120), experts=st.integers(1, 32), data=st.data())
def test_hypothesis_bf16(tokens, experts, data):
    top_k = data.draw(st.integers(1, min(8, experts)), label="top_k")
    inp = make_inputs(tokens, experts, top_k, 40, 24, dtype=torch.bfloat16)
    assert_close_to_reference(run_fused(inp), spec_of(inp), torch.bfloat16)
