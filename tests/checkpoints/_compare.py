"""Checks shared by the checkpoint tests: a loaded layer against its producer's dequantized weights."""

from __future__ import annotations

import torch

import moekit
from moekit.quant.dequant import dequantize
from moekit.tolerance import ACT_QUANT_REL_TOL, relative_error

WEIGHT_ONLY_REL_TOL = 1e-2


def dequantized(layer: moekit.MoE) -> tuple[torch.Tensor, torch.Tensor]:
    """The loaded layer's w13 / w2 as moekit's reference dequantizes them (float32)."""
    spec = layer.quant_method.spec
    return dequantize(layer._quantized("w13"), spec), dequantize(layer._quantized("w2"), spec)


def reference_layer(layer: moekit.MoE, w13: torch.Tensor, w2: torch.Tensor, dense: dict) -> moekit.MoE:
    """An unquantized float32 twin of ``layer`` with the producer's weights (router and shared
    experts copied from ``dense``, or from the layer where ``dense`` has no entry)."""
    ref = moekit.MoE(layer.num_experts, layer.top_k, layer.hidden_size, layer.intermediate_size,
                     activation=layer.activation, routing=layer.routing,
                     shared_intermediate_size=None if layer.shared_experts is None else
                     layer.shared_experts.up_proj.out_features,
                     shared_expert_gate=layer.shared_experts is not None and
                     layer.shared_experts.shared_expert_gate is not None,
                     expert_bias=layer.w13_bias is not None, router_bias=layer.router.bias is not None,
                     gate_up_layout=layer.gate_up_layout, router_dtype=layer.router_dtype,
                     dtype=torch.float32, device="cpu", backend="reference")
    with torch.no_grad():
        params = dict(layer.named_parameters())
        for name, p in ref.named_parameters():
            if name not in ("w13", "w2"):
                p.copy_(dense.get(name, params[name]))
        if layer.correction_bias is not None:
            ref.correction_bias.copy_(layer.correction_bias)
    ref.set_expert_weights(w13, w2)
    return ref


def assert_forward_matches(layer: moekit.MoE, ref: moekit.MoE, tokens: int = 24) -> float:
    """The loaded layer's forward against the reference within the scheme's bound; returns the error."""
    x = torch.randn(tokens, layer.hidden_size)
    out, expected = layer(x.to(layer.dtype)), ref(x)
    spec = layer.quant_method.spec
    bound = WEIGHT_ONLY_REL_TOL if spec.weight_only else ACT_QUANT_REL_TOL[spec.act.value]
    rel = relative_error(out.float(), expected.double())
    assert rel <= bound, f"{layer.quant}: relative error {rel:.3g} > {bound:g}"
    return rel
