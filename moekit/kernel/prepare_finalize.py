"""Prepare/finalize: the half of the modular kernel that moves tokens (and, for quantized schemes,
quantizes them). On one device there is nothing to move: this is the single-device version; expert
parallel versions dispatch and combine across ranks behind the same two methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PreparedTokens:
    x: torch.Tensor  # [T, H] activations as the experts backend consumes them
    topk_weights: torch.Tensor  # [T, k] fp32; ones if the weight was already applied to x
    topk_ids: torch.Tensor  # [T, k] int32 local expert ids


class SingleDevicePrepareFinalize:
    """No dispatch, no combine; holds no state, so one instance may serve every layer."""

    name = "single-device"

    def prepare(self, x, topk_weights, topk_ids, apply_router_weight_on_input: bool) -> PreparedTokens:
        if apply_router_weight_on_input:
            # Llama-4 scales the token before its (single) expert; the output is then not weighted.
            x = (x.float() * topk_weights).to(x.dtype)
            topk_weights = torch.ones_like(topk_weights)
        return PreparedTokens(x=x, topk_weights=topk_weights, topk_ids=topk_ids)

    def finalize(self, expert_out: torch.Tensor, shared_out: torch.Tensor | None, out_dtype) -> torch.Tensor:
        """expert_out [T, H] (already weighted and summed over k) + shared_out -> [T, H] out_dtype."""
        if shared_out is not None:
            expert_out = expert_out + shared_out
        return expert_out.to(out_dtype)


SINGLE_DEVICE = SingleDevicePrepareFinalize()
