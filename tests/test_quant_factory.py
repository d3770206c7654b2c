"""The factory from a checkpoint's quantization_config and a layer's name to a moekit scheme: names
matched as each producer matches them (compressed-tensors' targets and ignore, transformers'
modules_to_not_convert), and each config kind's schemes."""

import subprocess
import sys

import pytest

from moekit.quant.factory import layer_quant, scheme_for

pytest.importorskip("compressed_tensors")

EXPERT = "model.layers.0.mlp.experts.3.gate_proj"
W4A16 = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}
W8A16_CH = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}


def ct(groups: dict, ignore=(), fmt="pack-quantized") -> dict:
    return {"quant_method": "compressed-tensors", "format": fmt, "ignore": list(ignore),
            "config_groups": {f"group_{n}": {"targets": list(targets), "weights": weights}
                              for n, (targets, weights) in enumerate(groups.items())}}


def test_unquantized_without_a_config():
    assert scheme_for(None, EXPERT) == "none"


@pytest.mark.parametrize("name, expected", [
    (EXPERT, "w4a16-g128"),  # class target "Linear"
    ("model.layers.0.mlp.gate", "none"),  # ignored by regex
    ("lm_head", "none"),  # ignored by exact name
])
def test_ct_class_target_and_ignore(name, expected):
    config = ct({("Linear",): W4A16}, ignore=["re:.*mlp.gate$", "lm_head"])
    assert scheme_for(config, name) == expected


def test_ct_regex_targets_and_mixed_groups():
    # down projections in int8 per channel, gate/up in int4 groups; shared experts not targeted
    config = ct({("re:.*experts.*down_proj$",): W8A16_CH, ("re:.*experts.*(gate|up)_proj$",): W4A16})
    assert scheme_for(config, "model.layers.0.mlp.experts.3.down_proj") == "w8a16-ch"
    assert scheme_for(config, EXPERT) == "w4a16-g128"
    assert scheme_for(config, "model.layers.0.mlp.shared_expert.gate_proj") == "none"


def test_ct_act_order_config_parses():
    # compressed-tensors 0.20 refuses "actorder": "group" (removed); moekit reads it as g_idx expected
    config = ct({("Linear",): W4A16 | {"actorder": "group"}})
    quant = layer_quant(config, EXPERT)
    assert quant.scheme == "w4a16-g128" and quant.act_order
    assert not layer_quant(ct({("Linear",): W4A16 | {"actorder": "weight"}}), EXPERT).act_order


def test_ct_dense_format_is_refused():
    match = f"{EXPERT}: compressed-tensors scheme .* stored unquantized \\(format 'dense'\\)"
    with pytest.raises(ValueError, match=match):
        scheme_for(ct({("Linear",): W4A16}, fmt="dense"), EXPERT)


@pytest.mark.parametrize("config, name, expected", [
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, EXPERT, "fp8-block128"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128], "modules_to_not_convert": ["model.layers.0.mlp.gate"]},
     "model.layers.0.mlp.gate", "none"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128], "modules_to_not_convert": ["model.layers.0.mlp.gate"]},
     "model.layers.0.mlp.gate_proj", "fp8-block128"),  # a module boundary, not a prefix
    ({"quant_method": "fp8", "weight_block_size": [128, 128], "scale_fmt": "ue8m0"}, EXPERT, "fp8-block128"),
    ({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.mlp.router"]},
     "model.layers.0.mlp.experts", "mxfp4"),
    ({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.mlp.router"]},
     "model.layers.0.mlp.router", "none"),
])
def test_transformers_configs(config, name, expected):
    assert scheme_for(config, name) == expected


def test_fp8_static_activations_refused():
    with pytest.raises(ValueError, match=f"{EXPERT}: fine-grained fp8 config \\(activation_scheme='static'"):
        scheme_for({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, EXPERT)


def test_import_moekit_imports_no_checkpoint_package():
    code = ("import sys, moekit; bad = [m for m in ('transformers', 'compressed_tensors', 'safetensors') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
