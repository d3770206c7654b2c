"""torch.compile(fullgraph=True) traces moekit without graph breaks: the experts step is a custom op
with a fake implementation, and host checks stand aside while compiling (moekit/host_checks.py)."""

import pytest
import torch

import moekit
from moe_inputs import make_inputs


def _layer(**kwargs):
    return moekit.MoE(8, 2, 32, 16, dtype=torch.float32, device="cpu", **kwargs)


@pytest.mark.parametrize("kwargs", [
    {},
    {"shared_intermediate_size": 16, "shared_expert_gate": True},
    {"routing": moekit.RoutingConfig("sigmoid", num_groups=4, topk_groups=2, correction_bias=True,
                                     routed_scaling_factor=2.5)},
    {"activation": "swigluoai", "expert_bias": True, "gate_up_layout": "interleaved"},
], ids=["softmax", "shared", "grouped-sigmoid", "gpt-oss"])
def test_layer_compiles_fullgraph_and_matches(kwargs):
    layer = _layer(**kwargs)
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        explanation = torch._dynamo.explain(layer)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-6)


def test_fused_moe_compiles_fullgraph():
    inp = make_inputs(9, 6, 2, 24, 16)

    def f(x, w13, w2, w, ids):
        return moekit.fused_moe(x, w13, w2, w, ids)

    args = (inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids)
    explanation = torch._dynamo.explain(f)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(*args), f(*args))


def test_experts_custom_op_fake_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from moekit.kernel.experts_op import routed_experts

    with FakeTensorMode():
        x = torch.empty(7, 24, dtype=torch.bfloat16)
        out = routed_experts(x, torch.empty(7, 2), torch.empty(7, 2, dtype=torch.int32), torch.empty(4, 32, 24),
                             torch.empty(4, 24, 16), None, None, "reference", "silu", 1.702, 7.0, "concatenated")
        assert out.shape == (7, 24) and out.dtype == torch.bfloat16


def test_host_checks_switch():
    inp = make_inputs(4, 4, 2, 8, 8)
    bad = inp.topk_ids.clone()
    bad[0, 0] = 9
    with pytest.raises(ValueError, match="topk_ids"):
        moekit.fused_moe(inp.x, inp.w13, inp.w2, inp.topk_weights, bad)
    moekit.set_host_checks(False)
    try:  # checks off: the bad pair contributes nothing instead
        out = moekit.fused_moe(inp.x, inp.w13, inp.w2, inp.topk_weights, bad)
        weights = inp.topk_weights.clone()
        weights[0, 0] = 0.0
        good = bad.clone()
        good[0, 0] = 0
        ref = moekit.fused_moe(inp.x, inp.w13, inp.w2, weights, good)
        torch.testing.assert_close(out, ref)
    finally:
        moekit.set_host_checks(None)
