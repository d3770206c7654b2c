"""What an experts backend is asked to do, as data: the oracle matches this against each backend's
declared capabilities, so it must hold everything a backend could refuse on."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from moekit.activations import Activation, GateUpLayout


class ParallelLayout(enum.Enum):
    SINGLE = "single"  # all experts on this device
    EXPERT = "expert"  # experts sharded over ranks (moekit/ep/): pairs served elsewhere come with out-of-range ids


@dataclass(frozen=True)
class MoEProblem:
    num_experts: int  # experts held on this device
    top_k: int
    hidden_size: int
    intermediate_size: int  # per expert, after the activation (w2's input width)
    dtype: torch.dtype  # activations and unquantized weights
    device_type: str  # "cpu", "cuda", ...
    activation: Activation
    gate_up_layout: GateUpLayout = GateUpLayout.CONCATENATED
    quant: str = "none"  # quant scheme name; "none" for unquantized weights
    has_bias: bool = False  # per-expert biases on w13 and w2
    parallel: ParallelLayout = ParallelLayout.SINGLE
    apply_router_weight_on_input: bool = False  # scale x by the weight before gemm1 (Llama-4)
