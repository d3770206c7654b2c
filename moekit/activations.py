"""Expert activations: what sits between gemm1 (w13) and gemm2 (w2).

Gated activations read the gemm1 output as a gate half and an up half. Where those halves live is a
property of the weights (``GateUpLayout``): moekit's own format puts the gate rows first, gpt-oss
checkpoints interleave them (gate0, up0, gate1, up1, ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class ActivationKind(enum.Enum):
    SILU = "silu"  # silu(gate) * up  (Mixtral, Qwen, DeepSeek, OLMoE)
    GELU = "gelu"  # gelu(gate) * up, exact erf form
    SWIGLUOAI = "swigluoai"  # gpt-oss clamped SwiGLU: (clamp(up) + 1) * g * sigmoid(alpha * g)
    RELU2 = "relu2"  # relu(x)^2, no gate (Nemotron-H style)


class GateUpLayout(enum.Enum):
    CONCATENATED = "concatenated"  # rows [0, I) are the gate, [I, 2I) the up projection
    INTERLEAVED = "interleaved"  # even rows are the gate, odd rows the up projection


@dataclass(frozen=True)
class Activation:
    """An activation with its parameters; ``alpha``/``limit`` only mean something for swigluoai."""

    kind: ActivationKind
    alpha: float = 1.702
    limit: float = 7.0

    @property
    def gated(self) -> bool:
        return self.kind is not ActivationKind.RELU2

    @property
    def name(self) -> str:
        return self.kind.value


ACTIVATION_NAMES = tuple(kind.value for kind in ActivationKind)


def parse_activation(activation: str | Activation) -> Activation:
    """Accept an ``Activation`` or one of ``ACTIVATION_NAMES``; anything else is a ValueError."""
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str or moekit.Activation, got {type(activation).__name__}")
    try:
        return Activation(ActivationKind(activation))
    except ValueError:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATION_NAMES}") from None


def split_gate_up(h: torch.Tensor, layout: GateUpLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a gemm1 output [..., 2I] into (gate, up), each [..., I]."""
    if layout is GateUpLayout.INTERLEAVED:
        return h[..., 0::2], h[..., 1::2]
    half = h.shape[-1] // 2
    return h[..., :half], h[..., half:]


def apply_activation(
    h: torch.Tensor, activation: Activation, layout: GateUpLayout = GateUpLayout.CONCATENATED
) -> torch.Tensor:
    """Map gemm1's output [..., 2I] (or [..., I] without a gate) to gemm2's input [..., I]."""
    kind = activation.kind
    if kind is ActivationKind.RELU2:
        return torch.square(F.relu(h))
    gate, up = split_gate_up(h, layout)
    return activate_gate_up(gate, up, activation)


def activate_gate_up(gate: torch.Tensor, up: torch.Tensor, activation: Activation) -> torch.Tensor:
    """act(gate) * up for the gated kinds, from the two halves [..., I]."""
    kind = activation.kind
    if kind is ActivationKind.SILU:
        return F.silu(gate) * up
    if kind is ActivationKind.GELU:
        return F.gelu(gate) * up
    if kind is ActivationKind.SWIGLUOAI:
        # The gate is clamped from above only, the up half on both sides (gpt-oss reference).
        gate = gate.clamp(max=activation.limit)
        up = up.clamp(min=-activation.limit, max=activation.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * activation.alpha))
    raise ValueError(f"activation {activation.name!r} has no gate")
