"""Prepare/finalize: the half of the modular kernel that moves tokens (and, for quantized schemes,
quantizes them). On one device there is nothing to move: this is the single-device version; the
expert-parallel versions (moekit/ep/) dispatch and combine across ranks behind the same two methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PreparedTokens:
    x: torch.Tensor  # [R, H] activations as the experts backend consumes them
    topk_weights: torch.Tensor  # [R, k] fp32; ones if the weight was already applied to x
    topk_ids: torch.Tensor  # [R, k] int32 local expert ids (out of range: a pair served elsewhere)
    plan: Any = None  # what finalize needs to undo the dispatch (expert parallel)
    overlapped: Any = None  # what ``prepare(..., overlap=f)`` got from f() while the dispatch was in flight


def weight_on_input(x, topk_weights, apply_router_weight_on_input: bool):
    """Llama-4 scales the token before its (single) expert; the output is then not weighted."""
    if apply_router_weight_on_input:
        return (x.float() * topk_weights).to(x.dtype), torch.ones_like(topk_weights)
    return x, topk_weights


def add_shared(expert_out: torch.Tensor, shared_out: torch.Tensor | None, out_dtype) -> torch.Tensor:
    if shared_out is not None:
        expert_out = expert_out + shared_out
    return expert_out.to(out_dtype)


class SingleDevicePrepareFinalize:
    """No dispatch, no combine; holds no state, so one instance may serve every layer."""

    name = "single-device"

    def prepare(self, x, topk_weights, topk_ids, apply_router_weight_on_input: bool) -> PreparedTokens:
        x, topk_weights = weight_on_input(x, topk_weights, apply_router_weight_on_input)
        return PreparedTokens(x=x, topk_weights=topk_weights, topk_ids=topk_ids)

    def finalize(self, expert_out: torch.Tensor, shared_out: torch.Tensor | None, out_dtype,
                 prepared: PreparedTokens | None = None) -> torch.Tensor:
        """expert_out [T, H] (already weighted and summed over k) + shared_out -> [T, H] out_dtype."""
        return add_shared(expert_out, shared_out, out_dtype)


SINGLE_DEVICE = SingleDevicePrepareFinalize()
