"""moekit.load on the layouts transformers reads itself: fine-grained fp8 (DeepSeek-V3, Qwen3-FP8),
written by transformers' Fp8Quantize, and gpt-oss's mxfp4 blocks, read back by transformers'
convert_moe_packed_tensors. The loaded weights are exactly what transformers dequantizes."""

import torch
from _compare import assert_forward_matches, dequantized, reference_layer
from _producers import deepseek_v3_config, qwen3_moe_config, write_gpt_oss_mxfp4, write_hf_fp8

import moekit
from moekit.checkpoints import load_quantized_state_dict
from moekit.checkpoints.files import CheckpointFiles
from moekit.checkpoints.model_config import moe_arguments, read_config


def _check(w, layer, scheme):
    assert layer.quant == scheme
    w13, w2 = dequantized(layer)
    torch.testing.assert_close(w13, w.w13, rtol=0, atol=0)  # no value changes, only layout
    torch.testing.assert_close(w2, w.w2, rtol=0, atol=0)
    assert_forward_matches(layer, reference_layer(layer, w.w13, w.w2, w.dense))


def test_deepseek_v3_fp8(tmp_path):
    # weight + weight_scale_inv per expert and shared expert; the router is bf16 without scales
    # although the fp8 config does not exclude it (transformers never converts DeepSeek's router)
    w = write_hf_fp8(tmp_path, deepseek_v3_config(), shared=128, correction_bias=True)
    layer = moekit.load(w.path, dtype=torch.float32, device="cpu")[w.prefix]
    assert layer.router_dtype == torch.float32 and layer.correction_bias is not None
    for name in ("gate_proj", "up_proj", "down_proj"):  # shared experts dequantized to the layer dtype
        torch.testing.assert_close(getattr(layer.shared_experts, name).weight,
                                   w.dense[f"shared_experts.{name}.weight"], rtol=0, atol=0)
    _check(w, layer, "fp8-block128")


def test_qwen3_fp8(tmp_path):
    w = write_hf_fp8(tmp_path, qwen3_moe_config(h=256), h=256)  # two 128-column blocks per row
    _check(w, moekit.load(w.path, dtype=torch.float32, device="cpu")[w.prefix], "fp8-block128")


def test_gpt_oss_mxfp4(tmp_path):
    w = write_gpt_oss_mxfp4(tmp_path)
    layer = moekit.load(w.path, dtype=torch.float32, device="cpu")[w.prefix]
    assert layer.gate_up_layout.value == "interleaved" and layer.w13_bias is not None
    _check(w, layer, "mxfp4")


def test_gpt_oss_mxfp4_into_a_concatenated_layer(tmp_path):
    # the interleaved checkpoint rows (and bias rows, and scales) rearranged for the layer's layout
    w = write_gpt_oss_mxfp4(tmp_path)
    arguments = moe_arguments(read_config(w.path)) | {"gate_up_layout": "concatenated"}
    layer = moekit.MoE(**arguments, quant="mxfp4", dtype=torch.float32, device="cpu")
    load_quantized_state_dict(layer, CheckpointFiles(w.path), w.prefix + ".", {"quant_method": "mxfp4"})
    concatenated = torch.cat([w.w13[:, 0::2], w.w13[:, 1::2]], dim=1)
    bias = w.dense["w13_bias"]
    w.dense["w13_bias"] = torch.cat([bias[:, 0::2], bias[:, 1::2]], dim=1)
    torch.testing.assert_close(dequantized(layer)[0], concatenated, rtol=0, atol=0)
    assert_forward_matches(layer, reference_layer(layer, concatenated, w.w2, w.dense))
