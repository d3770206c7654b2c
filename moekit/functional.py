"""``moekit.fused_moe``: the functional MoE on already-routed tokens, unquantized weights."""

from __future__ import annotations

import dataclasses

import torch

from moekit._checks import FLOAT_DTYPES, INDEX_DTYPES, check_expert_ids, check_same_device, check_shape, check_tensor
from moekit._checks import check_router_weight_on_input, check_top_k
from moekit.activations import Activation, GateUpLayout, parse_activation
from moekit.experts.base import ExpertWeights
from moekit.hardware import current_environment
from moekit.host_checks import host_checks_enabled
from moekit.kernel.build import build_kernel
from moekit.problem import MoEProblem


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str | Activation = "silu",
    w13_bias: torch.Tensor | None = None,
    w2_bias: torch.Tensor | None = None,
    *,
    gate_up_layout: str | GateUpLayout = GateUpLayout.CONCATENATED,
    apply_router_weight_on_input: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Routed experts on x [T, H] with w13 [E, 2I, H] (gate rows first) and w2 [E, H, I].

    Returns [T, H] in x.dtype: sum_j topk_weights[t, j] * down_e(act(gate_e(x_t)) * up_e(x_t)).
    """
    act = parse_activation(activation)
    layout = GateUpLayout(gate_up_layout)
    problem = _check_and_describe(x, w13, w2, topk_weights, topk_ids, act, layout, w13_bias, w2_bias)
    if apply_router_weight_on_input:
        check_router_weight_on_input(problem.top_k)
        problem = dataclasses.replace(problem, apply_router_weight_on_input=True)
    weights = ExpertWeights(w13=w13, w2=w2, w13_bias=w13_bias, w2_bias=w2_bias)
    kernel, _ = build_kernel(problem, weights, current_environment(), requested=backend)
    return kernel.apply(x, topk_weights.float(), topk_ids)


def _check_and_describe(x, w13, w2, topk_weights, topk_ids, act, layout, w13_bias, w2_bias) -> MoEProblem:
    check_tensor("x", x, dim=2, dtypes=FLOAT_DTYPES)
    check_tensor("w13", w13, dim=3, dtypes=(x.dtype,))
    check_tensor("w2", w2, dim=3, dtypes=(x.dtype,))
    num_tokens, hidden = x.shape
    num_experts, _, intermediate = w2.shape
    check_shape("w2", w2, (num_experts, hidden, intermediate))
    gemm1_rows = 2 * intermediate if act.gated else intermediate
    check_shape("w13", w13, (num_experts, gemm1_rows, hidden))
    check_tensor("topk_weights", topk_weights, dim=2, dtypes=FLOAT_DTYPES)
    check_tensor("topk_ids", topk_ids, dim=2, dtypes=INDEX_DTYPES)
    top_k = topk_ids.shape[1]
    check_shape("topk_ids", topk_ids, (num_tokens, top_k))
    check_shape("topk_weights", topk_weights, (num_tokens, top_k))
    check_top_k(top_k, num_experts)
    if w13_bias is not None:
        check_tensor("w13_bias", w13_bias, dim=2, dtypes=FLOAT_DTYPES)
        check_shape("w13_bias", w13_bias, (num_experts, gemm1_rows))
    if w2_bias is not None:
        check_tensor("w2_bias", w2_bias, dim=2, dtypes=FLOAT_DTYPES)
        check_shape("w2_bias", w2_bias, (num_experts, hidden))
    check_same_device(
        {"x": x, "w13": w13, "w2": w2, "topk_weights": topk_weights, "topk_ids": topk_ids,
         "w13_bias": w13_bias, "w2_bias": w2_bias}
    )
    if host_checks_enabled(topk_ids):
        check_expert_ids(topk_ids, num_experts)
    return MoEProblem(
        num_experts=num_experts,
        top_k=top_k,
        hidden_size=hidden,
        intermediate_size=intermediate,
        dtype=x.dtype,
        device_type=x.device.type,
        activation=act,
        gate_up_layout=layout,
        has_bias=w13_bias is not None or w2_bias is not None,
    )
