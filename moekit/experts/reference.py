"""Reference experts backend: plain PyTorch, any device, the CPU fallback and the correctness oracle
for faster backends. Tokens are sorted by expert and only the experts that got tokens run, each as
two dense matmuls, so it stays usable at real model shapes."""

from __future__ import annotations

from typing import ClassVar

import torch

from moekit.activations import Activation, ActivationKind, GateUpLayout, apply_activation
from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.kernel.metadata import sort_by_expert
from moekit.problem import ParallelLayout


class ReferenceExperts(ExpertsBackend):
    name: ClassVar[str] = "reference"
    description: ClassVar[str] = "plain PyTorch, one pair of matmuls per expert that got tokens"
    devices = frozenset({"cpu", "cuda", "mps", "xpu"})
    dtypes = frozenset({torch.float32, torch.bfloat16, torch.float16, torch.float64})
    quant_schemes = frozenset({"none"})
    activations = frozenset(ActivationKind)
    gate_up_layouts = frozenset(GateUpLayout)
    parallel_layouts = frozenset({ParallelLayout.SINGLE})
    supports_bias = True
    supports_router_weight_on_input = True

    def apply(self, x, topk_weights, topk_ids, weights: ExpertWeights, activation: Activation, gate_up_layout):
        num_tokens, hidden = x.shape
        if num_tokens == 0:
            return torch.zeros(0, hidden, device=x.device, dtype=x.dtype)
        meta = sort_by_expert(topk_ids, weights.w13.shape[0])
        x_sorted = x[meta.token_of_row]  # [T*k, H]
        y_sorted = torch.empty(x_sorted.shape[0], hidden, device=x.device, dtype=torch.float32)
        for expert, start, end in meta.segments():
            y_sorted[start:end] = self._one_expert(x_sorted[start:end], expert, weights, activation, gate_up_layout)
        return meta.weight_and_sum(y_sorted, topk_weights, num_tokens, x.dtype)

    @staticmethod
    def _one_expert(x, e: int, w: ExpertWeights, activation: Activation, gate_up_layout) -> torch.Tensor:
        h = x @ w.w13[e].transpose(0, 1)
        if w.w13_bias is not None:
            h = h + w.w13_bias[e]
        a = apply_activation(h, activation, gate_up_layout)
        y = a @ w.w2[e].transpose(0, 1)
        if w.w2_bias is not None:
            y = y + w.w2_bias[e]
        return y.float()
