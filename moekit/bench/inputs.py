"""Rotated inputs: several independent token batches, each routed by the layer itself, so that
successive timed runs hit different experts and read their weights from device memory, not from
what the previous run left in L2 (50 MB on an H100)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

INPUT_SETS = 4


@dataclass(frozen=True)
class InputSet:
    x: torch.Tensor  # [T, H] in the layer's dtype
    topk_weights: torch.Tensor  # [T, k] fp32, from layer.route(x)
    topk_ids: torch.Tensor  # [T, k] int32


def make_input_sets(layer, tokens: int, count: int = INPUT_SETS, seed: int = 0) -> list[InputSet]:
    """``count`` batches of ``tokens`` random tokens (N(0, 1), never zeros) and their routing."""
    device, dtype = layer.w13.device, layer.w13.dtype
    sets = []
    for i in range(count):
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
        x = torch.randn(tokens, layer.hidden_size, generator=generator, device=device, dtype=dtype)
        with torch.inference_mode():
            weights, ids = layer.route(x)
        sets.append(InputSet(x, weights, ids))
    return sets
