"""The executable specification of a routed MoE, in float64 and three einsums (after gpt-fast's
Mixtral). Slow and memory-hungry by design: tests compare every backend and the layer against it."""

from __future__ import annotations

import torch

from moekit.activations import Activation, GateUpLayout, apply_activation, parse_activation


def fused_moe_spec(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H] ([E, I, H] without a gate)
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k]
    activation: str | Activation = "silu",
    w13_bias: torch.Tensor | None = None,  # [E, 2I]
    w2_bias: torch.Tensor | None = None,  # [E, H]
    gate_up_layout: GateUpLayout = GateUpLayout.CONCATENATED,
    apply_router_weight_on_input: bool = False,
) -> torch.Tensor:
    """Return sum_j w[t, j] * down_e(act(gate_up_e(x_t))) in float64, [T, H].

    Tokens go in chunks so the gathered weights stay under ~2^27 elements at real model shapes."""
    act = parse_activation(activation)
    per_token = topk_ids.shape[1] * (w13.shape[1] * w13.shape[2] + w2.shape[1] * w2.shape[2])
    chunk = max(1, _MAX_GATHERED // max(per_token, 1))
    parts = [
        _spec_chunk(x[i : i + chunk], w13, w2, topk_weights[i : i + chunk], topk_ids[i : i + chunk], act,
                    w13_bias, w2_bias, gate_up_layout, apply_router_weight_on_input)
        for i in range(0, x.shape[0], chunk)
    ]
    return torch.cat(parts) if parts else x.new_zeros(x.shape, dtype=torch.float64)


_MAX_GATHERED = 1 << 27


def _spec_chunk(x, w13, w2, topk_weights, topk_ids, act, w13_bias, w2_bias, gate_up_layout, weight_on_input):
    ids = topk_ids.long()
    x64, weight = x.double(), topk_weights.double()
    if weight_on_input:
        x64 = x64 * weight  # top_k == 1: the weight scales the input, not the output
        weight = torch.ones_like(weight)
    h = torch.einsum("th,tkoh->tko", x64, w13[ids].double())  # [T, k, 2I]
    if w13_bias is not None:
        h = h + w13_bias.double()[ids]
    a = apply_activation(h, act, gate_up_layout)  # [T, k, I]
    y = torch.einsum("tki,tkhi->tkh", a, w2[ids].double())  # [T, k, H]
    if w2_bias is not None:
        y = y + w2_bias.double()[ids]
    return torch.einsum("tkh,tk->th", y, weight)
