"""``moekit.MoE(quant=...)`` on the reference backend (CPU): the output is the float64 spec on the
dequantized weights (weight-only schemes exactly, w8a8 schemes within their activation-quantization
error), the state dict round-trips, float weights quantize on the fly, and bad quantized tensors are
refused by name before anything changes."""

import pytest
import torch

import moekit
from moekit.quant import METHODS, QuantizedMatrix
from moekit.quant.dequant import dequantize
from moekit.tolerance import relative_error

E, K_TOP, H, I = 6, 2, 128, 128
# w8a8: relative error against the spec with unquantized activations (measured ~0.02-0.05 fp8, ~0.01 int8).
W8A8_BOUND = {"fp8-per-tensor": 0.08, "fp8-per-tensor-static": 0.08, "fp8-per-channel": 0.08,
              "fp8-block128": 0.08, "int8-w8a8": 0.03}


def make_layer(scheme, **kwargs):
    args = dict(num_experts=E, top_k=K_TOP, hidden_size=H, intermediate_size=I, quant=scheme,
                dtype=torch.float32, device="cpu")
    args.update(kwargs)
    return moekit.MoE(**args)


def spec_on_dequantized(layer, x, weights, ids):
    spec = layer.quant_method.spec
    w13, w2 = (dequantize(layer._quantized(n), spec) for n in ("w13", "w2"))
    return moekit.fused_moe_spec(x, w13, w2, weights, ids, layer.activation, layer.w13_bias, layer.w2_bias,
                                 layer.gate_up_layout)


@pytest.mark.parametrize("scheme", sorted(METHODS))
def test_layer_matches_spec_on_dequantized_weights(scheme):
    layer = make_layer(scheme)
    x = torch.randn(9, H)
    y, (w, ids) = layer(x, return_routing=True)
    rel = relative_error(y, spec_on_dequantized(layer, x, w, ids))
    if layer.quant_method.spec.weight_only:
        assert rel <= 1e-5, rel
    else:
        assert 1e-4 < rel <= W8A8_BOUND[scheme], rel  # activations really were quantized
    assert layer.explain().backend == "reference"


@pytest.mark.parametrize("scheme", ["w4a16-g32", "mxfp4", "fp8-block128"])
def test_biases_and_gpt_oss_activation(scheme):
    layer = make_layer(scheme, activation="swigluoai", gate_up_layout="interleaved", expert_bias=True)
    x = torch.randn(5, H)
    y, (w, ids) = layer(x, return_routing=True)
    bound = 1e-5 if layer.quant_method.spec.weight_only else 0.08
    assert relative_error(y, spec_on_dequantized(layer, x, w, ids)) <= bound


def test_explain_names_the_scheme_and_why_triton_is_passed_over():
    text = str(make_layer("nvfp4").explain())
    assert "quant=nvfp4" in text and "reference" in text and "triton" in text


def test_state_dict_round_trips_into_a_fresh_layer():
    a, b = make_layer("w4a16-g64-asym"), make_layer("w4a16-g64-asym")
    keys = set(a.state_dict())
    assert {"w13", "w13_scale", "w13_zero", "w2", "w2_scale", "w2_zero"} <= keys
    x = torch.randn(4, H)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_set_expert_weights_quantizes_float_weights():
    dense = make_layer(None)
    quant = make_layer("w8a16-g32")
    quant.router.load_state_dict(dense.router.state_dict())
    quant.set_expert_weights(dense.w13.detach(), dense.w2.detach())
    x = torch.randn(7, H)
    ref = dense(x).double()
    assert relative_error(quant(x), ref) <= 0.01  # int8 weights, group 32


def test_set_quantized_experts_refuses_bad_tensor_before_changing_anything():
    layer = make_layer("mxfp4")
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    other = make_layer("mxfp4")
    w13, w2 = other._quantized("w13"), other._quantized("w2")
    bad_w2 = QuantizedMatrix(w2.data, w2.scale.float())  # e8m0 scales must stay uint8
    with pytest.raises(TypeError, match="w2.scale must have dtype torch.uint8, got torch.float32"):
        layer.set_quantized_experts(w13, bad_w2)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    layer.set_quantized_experts(w13, w2)
    assert torch.equal(layer.w13, w13.data)


def test_unquantized_layer_refuses_quantized_experts():
    layer = make_layer(None)
    q = make_layer("mxfp4")
    with pytest.raises(ValueError, match="needs a layer built with quant="):
        layer.set_quantized_experts(q._quantized("w13"), q._quantized("w2"))


def test_out_of_range_ids_contribute_nothing_quantized():
    layer = make_layer("w4a16-g128")
    x = torch.randn(3, H)
    w = torch.rand(3, K_TOP)
    ids = torch.tensor([[0, E], [-1, 2], [5, 1]], dtype=torch.int32)
    kernel_out = layer.kernel.experts.apply(x, w, ids, layer.kernel.weights, layer.activation, layer.gate_up_layout)
    valid = (ids >= 0) & (ids < E)
    ref = spec_on_dequantized(layer, x, w * valid, ids.clamp(0, E - 1))
    assert relative_error(kernel_out, ref) <= 1e-5
