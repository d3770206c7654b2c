"""The one place that maps a checkpoint's quantization config and a layer's name to a moekit scheme.

Three kinds of config are read, each with its producer's own parser and name matching:

- ``quant_method: compressed-tensors``: ``compressed_tensors.QuantizationConfig``; the layer's
  scheme is the first config group whose ``targets`` match it and whose ``ignore`` list does not
  (``compressed_tensors.is_match``: exact names, ``re:`` regexes, module class names; a checkpoint
  layer here is always a linear projection, so the class target ``Linear`` matches it).
- ``quant_method: fp8`` (DeepSeek-V3, Qwen3-FP8): ``transformers.FineGrainedFP8Config``.
- ``quant_method: mxfp4`` (gpt-oss): ``transformers.Mxfp4Config``.

For the last two ``modules_to_not_convert`` is matched as transformers matches it. A layer that is
ignored or not targeted is ``"none"``; a scheme moekit cannot run is a ValueError naming the layer
and the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from moekit.quant.int_weight_only import GROUPS
from moekit.quant.registry import UNQUANTIZED

COMPRESSED_TENSORS = "compressed-tensors"
HF_FP8 = "fp8"
HF_MXFP4 = "mxfp4"

# compressed-tensors formats whose tensors moekit's loaders read.
CT_FORMATS = ("float-quantized", "int-quantized", "naive-quantized", "pack-quantized", "mxfp4-pack-quantized",
              "nvfp4-pack-quantized")


@dataclass(frozen=True)
class LayerQuant:
    """How one checkpoint layer is quantized: moekit's scheme, the config kind, and for
    compressed-tensors the package's own scheme object and the storage format."""

    scheme: str
    method: str | None = None  # COMPRESSED_TENSORS, HF_FP8, HF_MXFP4 or None (unquantized)
    ct_scheme: Any = None  # compressed_tensors.QuantizationScheme
    format: str | None = None  # compressed-tensors format, e.g. "pack-quantized"
    act_order: bool = False  # GPTQ act-order (actorder "group"): a weight_g_idx per projection


def scheme_for(quant_config: dict | None, layer_name: str) -> str:
    """moekit's scheme name for the checkpoint layer ``layer_name`` (``"none"`` if it is unquantized)."""
    return layer_quant(quant_config, layer_name).scheme


def layer_quant(quant_config: dict | None, layer_name: str) -> LayerQuant:
    if quant_config is None:
        return LayerQuant(UNQUANTIZED)
    if not isinstance(quant_config, dict):
        raise TypeError(f"quantization_config must be a dict (config.json's), got {type(quant_config).__name__}")
    method = quant_config.get("quant_method", COMPRESSED_TENSORS)
    if method == COMPRESSED_TENSORS:
        return _compressed_tensors(quant_config, layer_name)
    if method == HF_FP8:
        return _hf_fp8(quant_config, layer_name)
    if method == HF_MXFP4:
        return _hf_mxfp4(quant_config, layer_name)
    raise ValueError(f"{layer_name}: quantization method {method!r} is not supported; moekit loads "
                     f"{COMPRESSED_TENSORS!r}, {HF_FP8!r} (fine-grained fp8) and {HF_MXFP4!r} checkpoints")


# --- compressed-tensors -------------------------------------------------------------------------

def _compressed_tensors(quant_config: dict, layer_name: str) -> LayerQuant:
    from compressed_tensors import is_match

    config, act_order_groups = _parse_ct(_freeze(quant_config))
    for group, scheme in config.config_groups.items():
        if is_match(layer_name, _linear_probe(), scheme.targets, config.ignore or ()):
            fmt = scheme.format or config.format
            name = _ct_to_moekit(scheme, fmt, layer_name)
            return LayerQuant(name, COMPRESSED_TENSORS, scheme, fmt, act_order=group in act_order_groups)
    return LayerQuant(UNQUANTIZED)


def _freeze(d):
    """A hashable copy of a JSON dict, so each distinct config is parsed once."""
    if isinstance(d, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in d.items()))
    if isinstance(d, (list, tuple)):
        return ("__list__", tuple(_freeze(v) for v in d))
    return d


def _thaw(f):
    if isinstance(f, tuple) and f and f[0] == "__list__":
        return [_thaw(v) for v in f[1]]
    if isinstance(f, tuple):
        return {k: _thaw(v) for k, v in f}
    return f


# GPTQ act-order with a g_idx per layer ("actorder": "group", alias "dynamic", or true): written by
# compressed-tensors < 0.20, whose 0.20 parser refuses the value as removed. The weights' layout is
# unchanged apart from the extra weight_g_idx tensor, so the field is taken out before parsing and
# the group remembered.
_ACT_ORDER_VALUES = ("group", "dynamic", True)


@lru_cache(maxsize=32)
def _parse_ct(frozen):
    """(compressed_tensors.QuantizationConfig, names of the config groups with act-order g_idx)."""
    from compressed_tensors import QuantizationConfig

    config = _thaw(frozen)
    act_order = set()
    for group, scheme in (config.get("config_groups") or {}).items():
        weights = scheme.get("weights") if isinstance(scheme, dict) else None
        order = weights.get("actorder") if isinstance(weights, dict) else None
        if order is True or (isinstance(order, str) and order.lower() in _ACT_ORDER_VALUES):
            weights["actorder"] = None
            act_order.add(group)
    return QuantizationConfig.model_validate(config), frozenset(act_order)


@lru_cache(maxsize=1)
def _linear_probe():
    """A meta-device nn.Linear: what a checkpoint's expert projection is, for class targets."""
    import torch

    return torch.nn.Linear(1, 1, bias=False, device="meta")


def describe_ct_scheme(scheme, fmt: str | None) -> str:
    """One line for errors, e.g. 'weights int4 group 256 symmetric, activations none, format pack-quantized'."""
    def args(a) -> str:
        if a is None:
            return "none"
        detail = {"group": f" group {a.group_size}", "tensor_group": f" tensor_group {a.group_size}",
                  "block": f" block {a.block_structure}"}.get(a.strategy, f" {a.strategy}")
        sym = "symmetric" if a.symmetric else "asymmetric"
        dyn = ", dynamic" if a.dynamic else ""
        return f"{a.type}{a.num_bits}{detail} {sym}{dyn}"

    return f"weights {args(scheme.weights)}, activations {args(scheme.input_activations)}, format {fmt}"


def _ct_to_moekit(scheme, fmt: str | None, layer_name: str) -> str:
    def refuse(why: str) -> ValueError:
        return ValueError(f"{layer_name}: compressed-tensors scheme ({describe_ct_scheme(scheme, fmt)}) "
                          f"has no moekit scheme: {why}")

    w, a = scheme.weights, scheme.input_activations
    if fmt == "dense":
        raise refuse("its weights are stored unquantized (format 'dense'); load them as float weights")
    if fmt not in CT_FORMATS:
        raise refuse(f"moekit reads the formats {', '.join(CT_FORMATS)}")
    if w is None:
        raise refuse("only weight quantization is supported")
    if scheme.output_activations is not None:
        raise refuse("output activation quantization is not supported")
    if w.dynamic:
        raise refuse("dynamic weight quantization is not supported")
    kind = (w.type, w.num_bits)
    if kind == ("float", 8):
        return _ct_fp8(w, a, refuse)
    if kind == ("int", 8) and a is not None:
        if (w.strategy, w.symmetric, a.type, a.num_bits, a.strategy, a.symmetric, bool(a.dynamic)) == \
                ("channel", True, "int", 8, "token", True, True):
            return "int8-w8a8"
        raise refuse("int8 w8a8 runs per-channel symmetric weights with dynamic per-token symmetric int8 activations")
    if a is not None:
        raise refuse("moekit quantizes activations only for fp8 and int8 weights (w8a8); "
                     f"{w.type}{w.num_bits} weights run weight-only")
    if w.type == "int" and w.num_bits in (4, 8):
        group = {"channel": "ch", "group": next((g for g, size in GROUPS.items() if size == w.group_size), None)}
        name = group.get(w.strategy)
        if name is None:
            raise refuse(f"int weight-only schemes take groups of {sorted(s for s in GROUPS.values() if s)} "
                         "columns or one scale per output channel")
        return f"w{w.num_bits}a16-{name}" + ("" if w.symmetric else "-asym")
    if kind == ("float", 4) and w.symmetric:
        if w.strategy == "group" and w.group_size == 32:
            return "mxfp4"
        if w.strategy == "tensor_group" and w.group_size == 16:
            return "nvfp4"
        raise refuse("fp4 weights run as mxfp4 (group 32, e8m0 scales) or nvfp4 (tensor_group 16)")
    raise refuse("moekit runs fp8, int8 and int4 (w4a16/w8a16), mxfp4 and nvfp4 weights")


def _ct_fp8(w, a, refuse) -> str:
    if a is None or (a.type, a.num_bits) != ("float", 8) or not a.symmetric or not w.symmetric:
        raise refuse("fp8 weights run with symmetric fp8 activations (w8a8)")
    if w.strategy == "tensor" and a.strategy == "tensor":
        return "fp8-per-tensor" if a.dynamic else "fp8-per-tensor-static"
    if w.strategy == "channel" and a.strategy == "token" and a.dynamic:
        return "fp8-per-channel"
    if w.strategy == "block" and list(w.block_structure or ()) == [128, 128] and a.strategy == "group" \
            and a.group_size == 128 and a.dynamic:
        return "fp8-block128"
    raise refuse("fp8 runs per-tensor weights with per-tensor activations (static or dynamic), per-channel weights "
                 "with dynamic per-token activations, or 128x128 blocks with dynamic 1x128 activation groups")


# --- transformers' fp8 and mxfp4 configs ------------------------------------------------------

def _not_converted(config, layer_name: str) -> bool:
    from transformers.quantizers.quantizers_utils import should_convert_module

    return not should_convert_module(layer_name, config.modules_to_not_convert)


def _hf_fp8(quant_config: dict, layer_name: str) -> LayerQuant:
    from transformers import FineGrainedFP8Config

    config = FineGrainedFP8Config(**{k: v for k, v in quant_config.items() if k != "quant_method"})
    if _not_converted(config, layer_name):
        return LayerQuant(UNQUANTIZED)
    settings = (f"activation_scheme={config.activation_scheme!r}, weight_block_size={config.weight_block_size}, "
                f"scale_fmt={config.scale_fmt!r}, expert_dtype={config.expert_dtype!r}")
    # ue8m0 scales (DeepSeek-V3.1) are powers of two, held exactly by moekit's fp32 scales.
    if (config.activation_scheme, list(config.weight_block_size or ()), config.expert_dtype) != \
            ("dynamic", [128, 128], "fp8"):
        raise ValueError(f"{layer_name}: fine-grained fp8 config ({settings}) has no moekit scheme: moekit runs "
                         "fp8 weights in 128x128 blocks with dynamic activations (fp8-block128)")
    return LayerQuant("fp8-block128", HF_FP8)


def _hf_mxfp4(quant_config: dict, layer_name: str) -> LayerQuant:
    from transformers import Mxfp4Config

    config = Mxfp4Config(**{k: v for k, v in quant_config.items() if k != "quant_method"})
    if _not_converted(config, layer_name):
        return LayerQuant(UNQUANTIZED)
    return LayerQuant("mxfp4", HF_MXFP4)


__all__ = ["LayerQuant", "layer_quant", "scheme_for"]
