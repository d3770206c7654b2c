"""The experts half of the modular kernel: gemm1 -> activation -> gemm2 over tokens grouped by
expert. A backend declares what it can do as class-level data; ``supports`` turns a problem into
(ok, reason) from that data alone, so the oracle can explain every refusal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from moekit.activations import Activation, ActivationKind, GateUpLayout
from moekit.hardware import Environment
from moekit.problem import MoEProblem, ParallelLayout
from moekit.quant.spec import QuantizedMatrix, QuantSpec


@dataclass(frozen=True)
class ExpertWeights:
    """Expert weights in a backend's format (for the reference: moekit's logical layout, views allowed).

    Unquantized, w13 and w2 are float tensors. Quantized, they are ``QuantizedMatrix``es (codes,
    scales, zero points, g_idx, global scale: quant/spec.py) and ``quant`` is the scheme's config;
    ``a13_scale`` / ``a2_scale`` are static activation scales where the checkpoint has them."""

    w13: torch.Tensor | QuantizedMatrix  # [E, 2I, H] gate rows then up rows (or interleaved); [E, I, H] ungated
    w2: torch.Tensor | QuantizedMatrix  # [E, H, I]
    w13_bias: torch.Tensor | None = None  # [E, 2I] (or [E, I])
    w2_bias: torch.Tensor | None = None  # [E, H]
    quant: QuantSpec | None = None
    a13_scale: torch.Tensor | None = None  # [] fp32, static scale of gemm1's input (w8a8, per tensor)
    a2_scale: torch.Tensor | None = None  # [] fp32, static scale of gemm2's input

    @property
    def num_experts(self) -> int:
        return (self.w2.data if self.quant is not None else self.w2).shape[0]


class ExpertsBackend:
    name: ClassVar[str]
    description: ClassVar[str]
    devices: ClassVar[frozenset[str]]
    dtypes: ClassVar[frozenset[torch.dtype]]
    quant_schemes: ClassVar[frozenset[str]]
    activations: ClassVar[frozenset[ActivationKind]]
    gate_up_layouts: ClassVar[frozenset[GateUpLayout]]
    parallel_layouts: ClassVar[frozenset[ParallelLayout]]
    supports_bias: ClassVar[bool]
    supports_router_weight_on_input: ClassVar[bool]
    capturable: ClassVar[bool] = False  # no host sync: replays in a CUDA graph

    @classmethod
    def explicit_only(cls, problem: MoEProblem, env: Environment) -> str | None:
        """Why this backend, though it can serve the problem, must be asked for by name (or None)."""
        return None

    @classmethod
    def available(cls, env: Environment) -> tuple[bool, str]:
        """Whether the machine can run this backend at all (software, hardware)."""
        return True, ""

    @classmethod
    def supports(cls, problem: MoEProblem, env: Environment) -> tuple[bool, str]:
        ok, reason = cls.available(env)
        if not ok:
            return False, reason
        checks = (
            (problem.device_type in cls.devices, f"device {problem.device_type!r} not in {_names(cls.devices)}"),
            (problem.dtype in cls.dtypes, f"dtype {problem.dtype} not in {_names(cls.dtypes)}"),
            (problem.quant in cls.quant_schemes, f"quant scheme {problem.quant!r} not in {_names(cls.quant_schemes)}"),
            (
                problem.activation.kind in cls.activations,
                f"activation {problem.activation.name!r} not in {_names(cls.activations)}",
            ),
            (
                problem.gate_up_layout in cls.gate_up_layouts,
                f"gate/up layout {problem.gate_up_layout.value!r} not in {_names(cls.gate_up_layouts)}",
            ),
            (
                problem.parallel in cls.parallel_layouts,
                f"parallel layout {problem.parallel.value!r} not in {_names(cls.parallel_layouts)}",
            ),
            (cls.supports_bias or not problem.has_bias, "expert biases not supported"),
            (
                cls.supports_router_weight_on_input or not problem.apply_router_weight_on_input,
                "apply_router_weight_on_input not supported",
            ),
        )
        for ok, reason in checks:
            if not ok:
                return False, reason
        return True, "supported"

    def apply(
        self,
        x: torch.Tensor,  # [T, H] activations, already prepared (quantized/scaled) for this backend
        topk_weights: torch.Tensor,  # [T, k] fp32
        topk_ids: torch.Tensor,  # [T, k] int32; ids outside [0, E) are skipped
        weights: ExpertWeights,
        activation: Activation,
        gate_up_layout: GateUpLayout,
    ) -> torch.Tensor:
        """Return sum_j topk_weights[t, j] * expert_{ids[t, j]}(x[t]) as [T, H] in x.dtype (summed in
        fp32). A pair whose id lies outside [0, E) contributes nothing."""
        raise NotImplementedError


def _names(values) -> str:
    shown = sorted(getattr(v, "value", None) or str(v) for v in values)
    return "{" + ", ".join(shown) + "}"
