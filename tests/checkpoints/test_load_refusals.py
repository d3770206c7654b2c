"""What moekit.load refuses, each with the layer's or the tensor's name, before any weight of the
block is converted (the layer handed to load_quantized_state_dict is left as it was)."""

import re

import pytest
import torch
from _producers import (ct_scheme, edit_config, edit_tensors, qwen3_moe_config, rewrite_act_order,
                        write_compressed_tensors, write_hf_fp8)

import moekit
from moekit.checkpoints import load_quantized_state_dict, per_expert
from moekit.checkpoints.files import CheckpointFiles
from moekit.checkpoints.model_config import read_config

P = "model.layers.0.mlp."


@pytest.fixture
def no_conversion(monkeypatch):
    """Fails the test if any expert weight is converted (stacked into moekit's layout)."""
    def converted(*args, **kwargs):
        raise AssertionError("a weight was converted before the checkpoint was refused")

    monkeypatch.setattr(per_expert, "_stack", converted)


def _w4a16(tmp_path, **weights):
    return write_compressed_tensors(tmp_path, ct_scheme("W4A16", group_size=32, **weights))


def _refused(path, error, match):
    with pytest.raises(error, match=match):
        moekit.load(path, dtype=torch.float32, device="cpu")


# --- malformed checkpoints -----------------------------------------------------------------------

def test_missing_scale(tmp_path, no_conversion):
    w = _w4a16(tmp_path)
    edit_tensors(w.path, lambda t: t.pop(P + "experts.2.down_proj.weight_scale"))
    _refused(w.path, ValueError, re.escape(f"missing tensor '{P}experts.2.down_proj.weight_scale'"))


def test_wrong_packed_shape(tmp_path, no_conversion):
    w = _w4a16(tmp_path)
    edit_tensors(w.path, lambda t: t.update({P + "experts.1.up_proj.weight_packed":
                                             t[P + "experts.1.up_proj.weight_packed"][:, :-1].contiguous()}))
    _refused(w.path, ValueError, re.escape(f"'{P}experts.1.up_proj.weight_packed' must have shape (128, 16), "
                                           "got (128, 15)"))


def test_group_size_not_dividing_k(tmp_path, no_conversion):
    # written with groups of 32 and I = 96; the config then claims groups of 64, which divide H = 128
    # but not down_proj's input dimension 96
    w = write_compressed_tensors(tmp_path, ct_scheme("W4A16", group_size=32), config=qwen3_moe_config(i=96), i=96)
    edit_config(w.path, lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(
        group_size=64))
    _refused(w.path, ValueError, re.escape(f"'{P}experts.0.down_proj': group size 64 of scheme 'w4a16-g64' does "
                                           "not divide its input dimension 96"))


def test_scale_of_the_wrong_dtype(tmp_path, no_conversion):
    w = write_compressed_tensors(tmp_path, ct_scheme("MXFP4A16"))
    edit_tensors(w.path, lambda t: t.update({P + "experts.3.gate_proj.weight_scale":
                                             t[P + "experts.3.gate_proj.weight_scale"].float()}))
    _refused(w.path, TypeError, re.escape(f"'{P}experts.3.gate_proj.weight_scale' (e8m0 scales) must have dtype "
                                          "torch.uint8, got torch.float32"))


def test_hf_fp8_scale_of_the_wrong_shape(tmp_path, no_conversion):
    w = write_hf_fp8(tmp_path, qwen3_moe_config())
    edit_tensors(w.path, lambda t: t.update({P + "experts.0.down_proj.weight_scale_inv": torch.ones(2, 1)}))
    _refused(w.path, ValueError, re.escape(f"'{P}experts.0.down_proj.weight_scale_inv' (128x128 block scales) must "
                                           "have shape (1, 1), got (2, 1)"))


def test_a_refused_block_leaves_the_layer_as_it_was(tmp_path, no_conversion):
    w = _w4a16(tmp_path)
    edit_tensors(w.path, lambda t: t.pop(P + "experts.3.down_proj.weight_shape"))
    layer = moekit.MoE(4, 2, 128, 128, quant="w4a16-g32", dtype=torch.float32, device="cpu",
                       routing=moekit.RoutingConfig("softmax", renormalize=True))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(f"missing tensor '{P}experts.3.down_proj.weight_shape'")):
        load_quantized_state_dict(layer, CheckpointFiles(w.path), P, read_config(w.path).quantization_config)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unexpected_tensor(tmp_path):
    w = _w4a16(tmp_path)
    edit_tensors(w.path, lambda t: t.update({P + "experts.0.gate_proj.weight_extra": torch.zeros(1)}))
    _refused(w.path, ValueError, re.escape(f"unexpected tensor(s) for this MoE layer: ['{P}experts.0.gate_proj."
                                           "weight_extra']"))


# --- schemes moekit cannot run --------------------------------------------------------------------

def test_scheme_moekit_cannot_run_names_layer_and_scheme(tmp_path):
    w = _w4a16(tmp_path)
    edit_config(w.path, lambda c: c["quantization_config"]["config_groups"]["group_0"].update(
        input_activations=dict(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)))
    _refused(w.path, ValueError, re.escape(f"{P}experts.0.gate_proj: compressed-tensors scheme (weights int4 group 32 "
                                           "symmetric, activations int8 token symmetric, dynamic, format "
                                           "pack-quantized) has no moekit scheme"))


def test_group_size_moekit_has_no_scheme_for(tmp_path):
    w = _w4a16(tmp_path)
    edit_config(w.path, lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(
        group_size=16))
    _refused(w.path, ValueError, "int weight-only schemes take groups of \\[32, 64, 128\\]")


def test_hf_fp8_other_block_size(tmp_path):
    w = write_hf_fp8(tmp_path, qwen3_moe_config())
    edit_config(w.path, lambda c: c["quantization_config"].update(weight_block_size=[64, 64]))
    _refused(w.path, ValueError, re.escape(f"{P}experts.0.gate_proj: fine-grained fp8 config (activation_scheme="
                                           "'dynamic', weight_block_size=[64, 64]"))


def test_unknown_quant_method(tmp_path):
    w = _w4a16(tmp_path)
    edit_config(w.path, lambda c: c["quantization_config"].update(quant_method="gptq"))
    _refused(w.path, ValueError, re.escape(f"{P}experts.0.gate_proj: quantization method 'gptq' is not supported"))


def test_gate_and_up_with_different_g_idx(tmp_path):
    # checked while gate and up are stacked into w13, before the layer changes
    w = rewrite_act_order(_w4a16(tmp_path), group=32)
    edit_tensors(w.path, lambda t: t.update({P + "experts.1.up_proj.weight_g_idx":
                                             t[P + "experts.1.up_proj.weight_g_idx"].flip(0).contiguous()}))
    _refused(w.path, ValueError, re.escape(f"{P}experts.1.gate_proj.weight_g_idx and {P}experts.1.up_proj."
                                           "weight_g_idx differ (expert 1)"))


def test_act_order_config_without_g_idx(tmp_path, no_conversion):
    w = rewrite_act_order(_w4a16(tmp_path), group=32)
    edit_tensors(w.path, lambda t: t.pop(P + "experts.0.gate_proj.weight_g_idx"))
    _refused(w.path, ValueError, re.escape(f"missing tensor '{P}experts.0.gate_proj.weight_g_idx'"))


def test_mixed_schemes_in_one_block(tmp_path):
    # a config that quantizes down_proj differently from gate/up: moekit's layer has one scheme
    w = _w4a16(tmp_path)

    def split(c):
        groups = c["quantization_config"]["config_groups"]
        groups["group_0"]["targets"] = ["re:.*(gate|up)_proj$"]
        groups["group_1"] = {"targets": ["re:.*down_proj$"], "format": "pack-quantized",
                             "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}}

    edit_config(w.path, split)
    _refused(w.path, ValueError, re.escape(f"{P}experts.0.down_proj: its quantization is 'w8a16-ch' but the layer's "
                                           "is 'w4a16-g32'"))
