"""moekit.load on tiny MoE checkpoints written by compressed-tensors itself, one per scheme: the
loaded layer's weights are the package's own dequantization of its tensors, and its forward
matches an unquantized layer on those weights (weight-only: rel <= 1e-2; w8a8: the activation
quantization bound)."""

import pytest
import torch
from _compare import assert_forward_matches, dequantized, reference_layer
from _producers import ct_scheme, deepseek_v3_config, rewrite_act_order, write_compressed_tensors

import moekit

pytest.importorskip("compressed_tensors")

DYNAMIC_FP8_TENSOR = dict(num_bits=8, type="float", symmetric=True, strategy="tensor", dynamic=True)

# moekit scheme -> (compressed-tensors preset, weight argument overrides, input activation override)
CASES = {
    "fp8-per-tensor-static": ("FP8", {}, None),  # float-quantized; input_scale per projection -> max
    "fp8-per-tensor": ("FP8", {}, DYNAMIC_FP8_TENSOR),  # gate/up scales differ -> requantized to one
    "fp8-per-channel": ("FP8_DYNAMIC", {}, None),  # weight_scale [N, 1]
    "fp8-block128": ("FP8_BLOCK", {}, None),  # weight_scale [N/128, K/128]
    "int8-w8a8": ("W8A8", {}, None),  # int-quantized
    "w4a16-g128": ("W4A16", {}, None),  # pack-quantized, 8 codes per int32
    "w4a16-g32": ("W4A16", dict(group_size=32), None),  # several groups per row
    "w4a16-ch": ("W4A16", dict(strategy="channel", group_size=None), None),  # weight_scale [N, 1]
    "w4a16-g64-asym": ("W4A16_ASYM", dict(group_size=64), None),  # zero points packed along N
    "w4a16-ch-asym": ("W4A16_ASYM", dict(strategy="channel", group_size=None), None),
    "w8a16-g128": ("W8A16", {}, None),  # pack-quantized, 4 codes per int32
    "w8a16-ch": ("W8A16", dict(strategy="channel", group_size=None), None),
    "w8a16-g32-asym": ("W8A16", dict(group_size=32, symmetric=False), None),  # int8 zero points
    "mxfp4": ("MXFP4A16", {}, None),  # mxfp4-pack-quantized, e8m0 uint8 scales
    "nvfp4": ("NVFP4A16", {}, None),  # nvfp4-pack-quantized, reciprocal global scale
}

# The producer's dequantization that moekit's is compared with, exactly except where noted.
WEIGHT_ATOL = {
    "fp8-per-tensor-static": 2**-4,  # gate/up requantized to their common scale: one fp8 step (e4m3: 2^-3 rel)
    "fp8-per-tensor": 2**-4,
    "nvfp4": 2**-7,  # compressed-tensors dequantizes nvfp4 to bf16
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every scheme's checkpoint, written once for the module."""
    out = {}
    for scheme, (preset, weights, act) in CASES.items():
        path = tmp_path_factory.mktemp(scheme)
        out[scheme] = write_compressed_tensors(path, ct_scheme(preset, input_activations=act, **weights))
    return out


@pytest.mark.parametrize("scheme", list(CASES))
def test_loads_as_the_producer_dequantizes(written, scheme):
    w = written[scheme]
    layers = moekit.load(w.path, dtype=torch.float32, device="cpu")
    assert list(layers) == [w.prefix]
    layer = layers[w.prefix]
    assert layer.quant == scheme
    w13, w2 = dequantized(layer)
    scale = max(w.w13.abs().max().item(), w.w2.abs().max().item())
    atol = WEIGHT_ATOL.get(scheme, 1e-6) * scale
    torch.testing.assert_close(w13, w.w13, rtol=0, atol=atol)
    torch.testing.assert_close(w2, w.w2, rtol=0, atol=atol)
    if layer.quant_method.spec.act_static:
        assert layer.a13_scale is not None and layer.a2_scale is not None
    assert_forward_matches(layer, reference_layer(layer, w.w13, w.w2, w.dense))


def test_shared_experts_and_router_bias_deepseek(tmp_path):
    # DeepSeek-V3 layout: fp8 blocks on routed and shared experts; the shared ones are dequantized,
    # the router stays float, and the correction bias is read beside it.
    w = write_compressed_tensors(tmp_path, ct_scheme("FP8_BLOCK"), config=deepseek_v3_config(), shared=128,
                                 correction_bias=True)
    layer = moekit.load(w.path, dtype=torch.float32, device="cpu")[w.prefix]
    assert layer.quant == "fp8-block128" and layer.shared_experts is not None
    for name in ("gate_proj", "up_proj", "down_proj"):
        got = getattr(layer.shared_experts, name).weight
        torch.testing.assert_close(got, w.dense[f"shared_experts.{name}.weight"], rtol=0, atol=1e-6)
    assert_forward_matches(layer, reference_layer(layer, w.w13, w.w2, w.dense))


def test_act_order_g_idx(tmp_path):
    # GPTQ act-order as compressed-tensors < 0.20 wrote it: "actorder": "group" + weight_g_idx
    w = rewrite_act_order(write_compressed_tensors(tmp_path, ct_scheme("W4A16", group_size=32)), group=32)
    layer = moekit.load(w.path, dtype=torch.float32, device="cpu")[w.prefix]
    assert layer.quant == "w4a16-g32" and layer.w13_g_idx is not None
    w13, w2 = dequantized(layer)
    torch.testing.assert_close(w13, w.w13, rtol=0, atol=1e-6)
    torch.testing.assert_close(w2, w.w2, rtol=0, atol=1e-6)
    assert_forward_matches(layer, reference_layer(layer, w.w13, w.w2, w.dense))


def test_loads_in_bfloat16(written):
    w = written["w4a16-g32"]
    layer = moekit.load(w.path, device="cpu", dtype=torch.bfloat16)[w.prefix]
    assert layer.dtype == torch.bfloat16
    assert_forward_matches(layer, reference_layer(layer, w.w13, w.w2, w.dense))


def test_mixtral_names_and_several_blocks(tmp_path):
    # block_sparse_moe.experts.{e}.w1 / w3 / w2 (gate, up, down), two MoE layers
    from _producers import MIXTRAL, mixtral_config

    w = write_compressed_tensors(tmp_path, ct_scheme("W4A16", group_size=64), config=mixtral_config(layers=2),
                                 naming=MIXTRAL, moe_layers=2)
    layers = moekit.load(w.path, dtype=torch.float32, device="cpu")
    assert list(layers) == ["model.layers.0.block_sparse_moe", "model.layers.1.block_sparse_moe"]
    for block in w.blocks:
        layer = layers[block.prefix]
        assert layer.quant == "w4a16-g64" and layer.routing.renormalize
        torch.testing.assert_close(dequantized(layer)[0], block.w13, rtol=0, atol=1e-6)
        assert_forward_matches(layer, reference_layer(layer, block.w13, block.w2, block.dense))


def test_qwen2_moe_shared_expert_gate_and_a_dense_layer(tmp_path):
    # layer 0 is a dense MLP (mlp_only_layers), skipped; shared_expert.* dequantized, its gate kept float
    from _producers import QWEN2_MOE, qwen2_moe_config

    w = write_compressed_tensors(tmp_path, ct_scheme("W8A16"), config=qwen2_moe_config(layers=2, mlp_only_layers=[0]),
                                 shared=128, naming=QWEN2_MOE, dense_layers=1)
    layers = moekit.load(w.path, dtype=torch.float32, device="cpu")
    assert list(layers) == ["model.layers.1.mlp"]
    layer = layers[w.prefix]
    assert layer.shared_experts.shared_expert_gate is not None
    for name in ("gate_proj", "up_proj", "down_proj"):
        torch.testing.assert_close(getattr(layer.shared_experts, name).weight,
                                   w.dense[f"shared_experts.{name}.weight"], rtol=0, atol=1e-6)
    assert_forward_matches(layer, reference_layer(layer, w.w13, w.w2, w.dense))
