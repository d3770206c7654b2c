"""The modular kernel: prepare/finalize x experts, composed once after the weights are loaded.

It holds the kernel-format weights and the chosen pieces; shared experts come in as an argument to
``apply`` so the kernel decides where they run: before the routed experts on one device; under
expert parallelism (all-to-all forms) between issuing the dispatch and waiting for it, so they
compute while the token rows travel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from moekit.activations import Activation, GateUpLayout
from moekit.experts.base import ExpertsBackend, ExpertWeights


@dataclass(frozen=True)
class ModularKernel:
    prepare_finalize: Any  # SingleDevicePrepareFinalize, or an expert-parallel one (moekit/ep/)
    experts: ExpertsBackend
    weights: ExpertWeights  # in the experts backend's format
    activation: Activation
    gate_up_layout: GateUpLayout
    apply_router_weight_on_input: bool = False

    def apply(
        self,
        x: torch.Tensor,  # [T, H]
        topk_weights: torch.Tensor,  # [T, k] fp32
        topk_ids: torch.Tensor,  # [T, k] int32
        shared_experts: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if shared_experts is not None and getattr(self.prepare_finalize, "overlaps_shared", False):
            # expert parallel: the shared experts run while the dispatch is in flight
            prepared = self.prepare_finalize.prepare(x, topk_weights, topk_ids, self.apply_router_weight_on_input,
                                                     overlap=lambda: _shared(shared_experts, x))
            shared_out = prepared.overlapped
        else:
            shared_out = shared_experts(x) if shared_experts is not None else None
            prepared = self.prepare_finalize.prepare(x, topk_weights, topk_ids, self.apply_router_weight_on_input)
        if torch.compiler.is_compiling():
            expert_out = self._experts_op(prepared)
        else:
            expert_out = self.experts.apply(
                prepared.x, prepared.topk_weights, prepared.topk_ids, self.weights, self.activation,
                self.gate_up_layout,
            )
        return self.prepare_finalize.finalize(expert_out, shared_out, x.dtype, prepared)

    def _experts_op(self, prepared) -> torch.Tensor:
        """The same experts call as one opaque custom op, for torch.compile (kernel/experts_op.py)."""
        from moekit.kernel.experts_op import routed_experts

        w, act = self.weights, self.activation
        return routed_experts(prepared.x, prepared.topk_weights, prepared.topk_ids, w.w13, w.w2, w.w13_bias,
                              w.w2_bias, self.experts.name, act.kind.value, act.alpha, act.limit,
                              self.gate_up_layout.value)

    def describe(self) -> str:
        return f"{self.prepare_finalize.name} x {self.experts.name}"


def _shared(shared_experts, x):
    with torch.profiler.record_function("moekit.shared_experts"):  # its GPU span shows in a profile
        return shared_experts(x)
