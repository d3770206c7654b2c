"""transformers' fine-grained fp8 experts (``FP8Experts``: DeepSeek-V3, Qwen3-FP8 and other
``quant_method: fp8`` checkpoints loaded on a GPU) read as moekit's ``fp8-block128`` scheme, without
dequantizing: ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I] are e4m3 codes in moekit's
layout already, and ``*_scale_inv`` [E, N/128, K/128] are the block scales (dequantized weight =
code x scale_inv), fp32 as they are or converted from ue8m0 (a small copy).

What moekit refuses, naming the module: block sizes other than 128 x 128 (per-tensor fp8 quantizes
activations per tensor, which moekit's schemes do not pair with per-row weights), static activation
scales, fp4 expert weights, biases, softcapped gates, and the clamped gate without gpt-oss's alpha.
"""

from __future__ import annotations

import torch
from torch import nn

from moekit.activations import Activation, ActivationKind, GateUpLayout
from moekit.experts.base import ExpertWeights
from moekit.quant import QuantizedMatrix, method_for

SCHEME = "fp8-block128"


def is_fp8_experts(module: nn.Module) -> bool:
    return isinstance(getattr(module, "down_proj_scale_inv", None), torch.Tensor)


def read_fp8_experts(module: nn.Module):
    """The module as ``HFExperts`` with quantized weights (views of its own tensors)."""
    from moekit.integrations.hf_experts import HFExperts

    name = type(module).__name__
    _refuse_unsupported(module, name)
    method = method_for(SCHEME)
    w13 = QuantizedMatrix(module.gate_up_proj, _scale(module.gate_up_proj_scale_inv))
    w2 = QuantizedMatrix(module.down_proj, _scale(module.down_proj_scale_inv))
    num_experts, hidden, inter = w2.data.shape
    for what, m, n, k in (("gate_up_proj", w13, 2 * inter, hidden), ("down_proj", w2, hidden, inter)):
        method.check(f"{name}.{what}", m, num_experts, n, k)
    weights = ExpertWeights(w13, w2, quant=method.spec)
    return HFExperts(weights, _activation(module, name), GateUpLayout.CONCATENATED)


def _refuse_unsupported(module: nn.Module, name: str) -> None:
    block = tuple(getattr(module, "block_size", None) or ())
    problems = []
    if block != (128, 128):
        problems.append(f"weight_block_size {list(block) or None} (moekit serves 128 x 128 blocks)")
    if getattr(module, "activation_scheme", "dynamic") != "dynamic":
        problems.append(f"activation_scheme {module.activation_scheme!r} (moekit quantizes activations dynamically)")
    if not module.has_gate:
        problems.append("no gate (up_proj only)")
    if module.has_bias:
        problems.append("expert biases")
    if getattr(module, "gate_softcap", None) is not None:
        problems.append("a softcapped gate")
    if module.down_proj.dtype != torch.float8_e4m3fn:
        problems.append(f"expert weights of dtype {module.down_proj.dtype} (fp4 experts?)")
    if problems:
        raise NotImplementedError(f"{name}: fp8 experts with {'; '.join(problems)} are not served by moekit "
                                  f"(it maps them to {SCHEME!r})")


def _scale(scale_inv: torch.Tensor) -> torch.Tensor:
    if scale_inv.dtype == torch.float32:
        return scale_inv
    if scale_inv.element_size() == 1:  # ue8m0: 2 ** (code - 127)
        from moekit.quant import formats

        return formats.e8m0_to_float(scale_inv.view(torch.uint8))
    return scale_inv.float()


def _activation(module: nn.Module, name: str) -> Activation:
    from moekit.integrations.hf_experts import act_fn_kind

    alpha, limit = getattr(module, "swiglu_alpha", None), getattr(module, "swiglu_limit", None)
    if alpha is not None and limit is not None:
        return Activation(ActivationKind.SWIGLUOAI, alpha=float(alpha), limit=float(limit))
    if getattr(module, "limit", None) is not None:
        raise NotImplementedError(f"{name}: a clamped gate without swiglu_alpha has no moekit activation")
    kind = act_fn_kind(getattr(module, "act_fn", None))
    if kind not in (ActivationKind.SILU, ActivationKind.GELU):
        raise NotImplementedError(f"{name}: act_fn {type(getattr(module, 'act_fn', None)).__name__} has no moekit "
                                  "activation (silu, gelu)")
    return Activation(kind)


__all__ = ["is_fp8_experts", "read_fp8_experts"]
