"""Random MoE problems for tests: fresh weights scaled so activations stay O(1)."""

from dataclasses import dataclass

import torch

import moekit


@dataclass
class MoEInputs:
    x: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    w13_bias: torch.Tensor | None = None
    w2_bias: torch.Tensor | None = None


def make_inputs(tokens, experts, top_k, hidden, inter, dtype=torch.float32, *, gated=True, bias=False,
                used_experts=None) -> MoEInputs:
    """``used_experts`` limits routing to the first few experts, so the rest get no tokens."""
    rows = 2 * inter if gated else inter
    x = torch.randn(tokens, hidden).to(dtype)
    w13 = (torch.randn(experts, rows, hidden) / hidden**0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter) / inter**0.5).to(dtype)
    logits = torch.randn(tokens, experts)
    if used_experts is not None:
        logits[:, used_experts:] = -1e4
    topk_weights, topk_ids = moekit.route(logits, top_k)
    b13 = (0.1 * torch.randn(experts, rows)).to(dtype) if bias else None
    b2 = (0.1 * torch.randn(experts, hidden)).to(dtype) if bias else None
    return MoEInputs(x, w13, w2, topk_weights, topk_ids, b13, b2)


def interleave_gate_up(inp: MoEInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """w13 and its bias with gate/up rows interleaved (gpt-oss checkpoint layout): same math."""
    gate, up = inp.w13.chunk(2, dim=1)
    w13 = torch.stack([gate, up], dim=2).reshape_as(inp.w13)
    if inp.w13_bias is None:
        return w13, None
    b_gate, b_up = inp.w13_bias.chunk(2, dim=1)
    return w13, torch.stack([b_gate, b_up], dim=2).reshape_as(inp.w13_bias)


def spec_of(inp: MoEInputs, activation="silu", **kwargs) -> torch.Tensor:
    return moekit.fused_moe_spec(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, activation,
                                 inp.w13_bias, inp.w2_bias, **kwargs)


def run_fused(inp: MoEInputs, activation="silu", **kwargs) -> torch.Tensor:
    return moekit.fused_moe(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, activation,
                            inp.w13_bias, inp.w2_bias, **kwargs)
