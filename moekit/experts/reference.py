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
from moekit.quant import KNOWN_SCHEMES
from moekit.quant.dequant import dequantize, fake_quantize_activations


class ReferenceExperts(ExpertsBackend):
    name: ClassVar[str] = "reference"
    description: ClassVar[str] = "plain PyTorch, one pair of matmuls per expert that got tokens (quantized weights: that expert dequantized)"
    devices = frozenset({"cpu", "cuda", "mps", "xpu"})
    dtypes = frozenset({torch.float32, torch.bfloat16, torch.float16, torch.float64})
    quant_schemes = frozenset(KNOWN_SCHEMES)
    activations = frozenset(ActivationKind)
    gate_up_layouts = frozenset(GateUpLayout)
    parallel_layouts = frozenset({ParallelLayout.SINGLE, ParallelLayout.EXPERT})
    supports_bias = True
    supports_router_weight_on_input = True

    def apply(self, x, topk_weights, topk_ids, weights: ExpertWeights, activation: Activation, gate_up_layout):
        num_tokens, hidden = x.shape
        if num_tokens == 0:
            return torch.zeros(0, hidden, device=x.device, dtype=x.dtype)
        meta = sort_by_expert(topk_ids, weights.num_experts)
        w8a8 = weights.quant is not None and not weights.quant.weight_only
        if w8a8:  # the activations as the scheme's kernel sees them (a per-tensor scale spans all tokens)
            x_in = fake_quantize_activations(x, weights.quant, weights.a13_scale)  # fp32
        x_sorted = (x_in if w8a8 else x)[meta.token_of_row]  # [T*k, H]
        segments = list(meta.segments())
        activated = [self._gemm1(x_sorted[s:t], e, weights, activation, gate_up_layout) for e, s, t in segments]
        if w8a8 and activated:
            flat = fake_quantize_activations(torch.cat(activated), weights.quant, weights.a2_scale)
            activated = list(flat.split([t - s for _, s, t in segments]))
        y_sorted = torch.zeros(x_sorted.shape[0], hidden, device=x.device, dtype=torch.float32)
        for (e, s, t), a in zip(segments, activated):
            y_sorted[s:t] = self._gemm2(a, e, weights)
        return meta.weight_and_sum(y_sorted, topk_weights, num_tokens, x.dtype)

    @staticmethod
    def _gemm1(x, e: int, w: ExpertWeights, activation: Activation, gate_up_layout) -> torch.Tensor:
        h = _matmul(x, w.w13, e, w.quant)
        if w.w13_bias is not None:
            h = h + w.w13_bias[e]
        return apply_activation(h, activation, gate_up_layout)

    @staticmethod
    def _gemm2(a, e: int, w: ExpertWeights) -> torch.Tensor:
        y = _matmul(a, w.w2, e, w.quant)
        if w.w2_bias is not None:
            y = y + w.w2_bias[e]
        return y.float()


def _matmul(x: torch.Tensor, matrix, e: int, quant) -> torch.Tensor:
    """x @ matrix[e].T in x.dtype; a quantized matrix is dequantized and multiplied in fp32 (fp32 out)."""
    if quant is None:
        return x @ matrix[e].transpose(0, 1)
    return x.float() @ dequantize(matrix, quant, expert=e).transpose(0, 1)
