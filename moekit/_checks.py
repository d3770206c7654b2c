"""Argument checks shared by the public entry points: each raises with the argument's name, what
was seen and what was expected (docs/errors.md lists every rule)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(name: str, t, *, dim: int | None = None, dtypes: Sequence[torch.dtype] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        expected = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({expected}), got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_same_device(tensors: dict[str, torch.Tensor | None]) -> None:
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"all tensors must be on one device, got {where}")


def check_positive_int(name: str, value, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_top_k(top_k, num_experts: int) -> None:
    check_positive_int("top_k", top_k)
    if top_k > num_experts:
        raise ValueError(f"top_k must be <= num_experts ({num_experts}), got {top_k}")


def check_expert_ids(topk_ids: torch.Tensor, num_experts: int) -> None:
    """Ids outside [0, E) would index weights out of bounds; refuse them (one host sync)."""
    if topk_ids.numel() == 0:
        return
    lo, hi = int(topk_ids.min()), int(topk_ids.max())
    if lo < 0 or hi >= num_experts:
        raise ValueError(f"topk_ids must lie in [0, {num_experts}), got values in [{lo}, {hi}]")


def check_router_weight_on_input(top_k: int) -> None:
    # Scaling the input by the weight is only the same MoE when each token has one expert.
    if top_k != 1:
        raise ValueError(f"apply_router_weight_on_input needs top_k == 1, got top_k={top_k}")
