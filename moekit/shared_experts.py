"""Shared experts: a dense MLP every token goes through, beside the routed experts (DeepSeek-V3,
Qwen2-MoE, Llama-4). Module names follow Hugging Face (gate_proj/up_proj/down_proj) so checkpoints
and patched blocks map onto it one to one."""

from __future__ import annotations

import torch
from torch import nn

from moekit.activations import Activation, activate_gate_up


class SharedExperts(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, activation: Activation, *, gate: bool = False,
                 dtype=None, device=None):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.activation = activation
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory) if activation.gated else None
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False, **factory)
        # Qwen2-MoE scales the shared output per token by sigmoid(x . g).
        self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False, **factory) if gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            h = torch.square(torch.relu(self.up_proj(x)))
        else:
            h = activate_gate_up(self.gate_proj(x), self.up_proj(x), self.activation)
        out = self.down_proj(h)
        if self.shared_expert_gate is not None:
            out = torch.sigmoid(self.shared_expert_gate(x)) * out
        return out
