"""The experts step as a ``torch.library`` custom op, so ``torch.compile(fullgraph=True)`` traces a
moekit forward without a graph break: dynamo sees one opaque op with a fake (shape-only)
implementation, whatever the backend does inside (a Triton launch, or the reference's loop).

Eager calls skip the dispatcher and call the backend directly (``ModularKernel.apply``): the op
is for tracing, where its overhead does not count."""

from __future__ import annotations

import torch

from moekit.activations import Activation, ActivationKind, GateUpLayout
from moekit.experts import ALL_BACKENDS, ExpertWeights

_BACKENDS = {b.name: b() for b in ALL_BACKENDS}


@torch.library.custom_op("moekit::routed_experts", mutates_args=())
def routed_experts(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_bias: torch.Tensor | None,
    w2_bias: torch.Tensor | None,
    backend: str,
    activation: str,
    alpha: float,
    limit: float,
    gate_up_layout: str,
) -> torch.Tensor:
    act = Activation(ActivationKind(activation), alpha, limit)
    weights = ExpertWeights(w13, w2, w13_bias, w2_bias)
    return _BACKENDS[backend].apply(x, topk_weights, topk_ids, weights, act, GateUpLayout(gate_up_layout))


@routed_experts.register_fake
def _(x, topk_weights, topk_ids, w13, w2, w13_bias, w2_bias, backend, activation, alpha, limit, gate_up_layout):
    return x.new_empty(x.shape[0], w2.shape[1])
