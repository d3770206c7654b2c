"""Routing: router logits [T, E] -> (topk_weights [T, k] fp32, topk_ids [T, k] int32).

Every variant the supported models use is one ``RoutingConfig``; ``route`` is the functional form
with the signature of DESIGN.md. The math follows each model's own router code (tests/test_routing.py
checks it against the Hugging Face implementations on the same logits). On CUDA the same math runs
as one fused Triton kernel (moekit/triton_ops/routing_kernel.py) where it supports the routing;
``MOEKIT_ROUTING=torch|triton`` forces a path (docs/routing.md).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moekit import triton_ops  # does not import triton
from moekit._checks import FLOAT_DTYPES, check_positive_int, check_shape, check_tensor, check_top_k
from moekit.host_checks import host_checks_enabled

# A user routing function: (router_logits [T, E], top_k) -> (weights [T, k], ids [T, k]).
RoutingFunction = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class Scoring(enum.Enum):
    SOFTMAX = "softmax"  # softmax over all experts, then top-k (Mixtral, Qwen, OLMoE)
    SIGMOID = "sigmoid"  # sigmoid per expert, then top-k (DeepSeek-V3, GLM-4.5, Kimi-K2)
    TOPK_SOFTMAX = "topk_softmax"  # top-k on raw logits, softmax over the k chosen (gpt-oss)
    TOPK_SIGMOID = "topk_sigmoid"  # top-k on raw logits, sigmoid of each chosen logit (Llama-4)


@dataclass(frozen=True)
class RoutingConfig:
    """How a layer turns router logits into expert choices. The correction bias itself is a tensor
    owned by the layer; ``correction_bias`` here only says the layer has one."""

    scoring: Scoring | RoutingFunction = Scoring.SOFTMAX
    renormalize: bool = True  # divide the k chosen weights by their sum
    num_groups: int | None = None  # grouped top-k: experts split into this many equal groups
    topk_groups: int | None = None  # ... of which only the best this many may be chosen from
    correction_bias: bool = False  # a per-expert bias added to the scores for selection only
    routed_scaling_factor: float = 1.0  # multiplies the final weights (DeepSeek-V3: 2.5)

    def __post_init__(self):
        object.__setattr__(self, "scoring", _parse_scoring(self.scoring))  # "softmax" -> Scoring.SOFTMAX

    @staticmethod
    def parse(routing: RoutingConfig | str | RoutingFunction | None) -> RoutingConfig:
        if routing is None:
            return RoutingConfig()
        if isinstance(routing, RoutingConfig):
            return routing
        if isinstance(routing, str):
            return RoutingConfig(scoring=_parse_scoring(routing))
        if callable(routing):
            return RoutingConfig(scoring=routing, renormalize=False)
        raise TypeError(f"routing must be a RoutingConfig, a scoring name or a function, got {type(routing).__name__}")


def _parse_scoring(scoring: str | Scoring | RoutingFunction) -> Scoring | RoutingFunction:
    if isinstance(scoring, Scoring) or (callable(scoring) and not isinstance(scoring, str)):
        return scoring
    try:
        return Scoring(scoring)
    except ValueError:
        names = tuple(s.value for s in Scoring)
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {names} or a function") from None


def route(
    router_logits: torch.Tensor,
    top_k: int,
    scoring: str | Scoring | RoutingFunction = "softmax",
    renormalize: bool = True,
    num_groups: int | None = None,
    topk_groups: int | None = None,
    correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``top_k`` experts per token. Returns (weights fp32 [T, k], ids int32 [T, k])."""
    check_tensor("router_logits", router_logits, dim=2, dtypes=FLOAT_DTYPES)
    num_experts = router_logits.shape[1]
    check_top_k(top_k, num_experts)
    scoring = _parse_scoring(scoring)
    _check_groups(num_groups, topk_groups, num_experts, top_k)
    if correction_bias is not None:
        check_tensor("correction_bias", correction_bias, dim=1, dtypes=FLOAT_DTYPES)
        check_shape("correction_bias", correction_bias, (num_experts,))
    # A host sync: eager only, and switchable (moekit.set_host_checks / MOEKIT_HOST_CHECKS).
    if host_checks_enabled(router_logits) and torch.isnan(router_logits).any():
        raise ValueError("router_logits contains NaN")

    if _use_fused_kernel(router_logits, top_k, scoring, num_groups):
        from moekit.triton_ops.routing_kernel import fused_route

        return fused_route(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias,
                           routed_scaling_factor)
    if callable(scoring) and not isinstance(scoring, Scoring):
        weights, ids = _route_user(scoring, router_logits, top_k)
    elif scoring in (Scoring.TOPK_SOFTMAX, Scoring.TOPK_SIGMOID):
        weights, ids = _route_on_logits(router_logits, top_k, scoring, correction_bias)
    else:
        weights, ids = _route_on_scores(router_logits, top_k, scoring, num_groups, topk_groups, correction_bias)

    if renormalize:
        # The epsilon keeps an all-zero row finite; DeepSeek-V3's router adds the same 1e-20.
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    if routed_scaling_factor != 1.0:
        weights = weights * routed_scaling_factor
    return weights.contiguous(), ids.to(torch.int32).contiguous()


def route_with_config(router_logits: torch.Tensor, top_k: int, config: RoutingConfig, correction_bias=None):
    """``route`` driven by a layer's RoutingConfig."""
    return route(
        router_logits,
        top_k,
        scoring=config.scoring,
        renormalize=config.renormalize,
        num_groups=config.num_groups,
        topk_groups=config.topk_groups,
        correction_bias=correction_bias,
        routed_scaling_factor=config.routed_scaling_factor,
    )


def _use_fused_kernel(router_logits: torch.Tensor, top_k: int, scoring, num_groups) -> bool:
    """The fused Triton kernel when it can run, else PyTorch; ``MOEKIT_ROUTING`` = torch | triton forces
    one, and forcing triton where it cannot run is an error that says why."""
    requested = os.environ.get("MOEKIT_ROUTING", "")
    if requested == "torch":
        return False
    if requested not in ("", "triton"):
        raise ValueError(f"MOEKIT_ROUTING must be 'torch' or 'triton', got {requested!r}")
    forced = requested == "triton"
    refusal = _fused_kernel_refusal(router_logits, top_k, scoring, num_groups, forced)
    if refusal is not None and forced:
        raise ValueError(f"MOEKIT_ROUTING=triton, but the fused routing kernel cannot run: {refusal}")
    return refusal is None


_triton_found: bool | None = None  # find_spec costs microseconds per call; ask once


def _fused_kernel_refusal(router_logits: torch.Tensor, top_k: int, scoring, num_groups, forced: bool) -> str | None:
    global _triton_found
    # Unforced, only CUDA; forced, also the CPU under TRITON_INTERPRET=1 (how CI tests the kernel).
    if not (router_logits.is_cuda or (forced and triton_ops.interpreting())):
        return f"router_logits are on {router_logits.device}; the kernel needs CUDA (or TRITON_INTERPRET=1)"
    if not isinstance(scoring, Scoring):
        return "user routing functions run in PyTorch"
    if router_logits.requires_grad and torch.is_grad_enabled():
        return "router_logits require grad and the kernel has no backward"
    if _triton_found is None:
        _triton_found = triton_ops.triton_importable()
    if not _triton_found:
        return "triton is not installed"
    from moekit.triton_ops.routing_kernel import fused_route_supported

    ok, why = fused_route_supported(router_logits.shape[1], top_k, scoring, num_groups)
    return None if ok else why


def _check_groups(num_groups, topk_groups, num_experts: int, top_k: int) -> None:
    if num_groups is None and topk_groups is None:
        return
    if num_groups is None or topk_groups is None:
        raise ValueError(
            f"num_groups and topk_groups must be given together, got num_groups={num_groups}, topk_groups={topk_groups}"
        )
    check_positive_int("num_groups", num_groups)
    check_positive_int("topk_groups", topk_groups)
    if num_experts % num_groups != 0:
        raise ValueError(f"num_groups must divide num_experts ({num_experts}), got {num_groups}")
    if topk_groups > num_groups:
        raise ValueError(f"topk_groups must be <= num_groups ({num_groups}), got {topk_groups}")
    if top_k > topk_groups * (num_experts // num_groups):
        raise ValueError(
            f"top_k ({top_k}) exceeds the experts in the {topk_groups} chosen groups "
            f"({topk_groups * (num_experts // num_groups)})"
        )


def _route_on_scores(logits, top_k, scoring, num_groups, topk_groups, correction_bias):
    scores = logits.float().softmax(dim=-1) if scoring is Scoring.SOFTMAX else logits.float().sigmoid()
    # The correction bias steers which experts are chosen, never the weights they get.
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if num_groups is not None and num_groups > 1:
        choice = _mask_to_best_groups(choice, num_groups, topk_groups, use_top2_sum=correction_bias is not None)
    ids = torch.topk(choice, top_k, dim=-1).indices
    return scores.gather(1, ids), ids


def _mask_to_best_groups(choice: torch.Tensor, num_groups: int, topk_groups: int, use_top2_sum: bool):
    """Keep only the experts of the ``topk_groups`` best groups; the rest become -inf.

    A group's score is the sum of its two best experts when a correction bias is used (DeepSeek-V3),
    else its best expert (DeepSeek-V2)."""
    tokens, num_experts = choice.shape
    grouped = choice.view(tokens, num_groups, num_experts // num_groups)
    if use_top2_sum and grouped.shape[-1] >= 2:
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped.amax(dim=-1)
    best_groups = torch.topk(group_scores, topk_groups, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
    return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(tokens, num_experts)


def _route_on_logits(logits, top_k, scoring, correction_bias):
    choice = logits if correction_bias is None else logits + correction_bias.to(logits.dtype)
    ids = torch.topk(choice, top_k, dim=-1).indices
    chosen = logits.gather(1, ids).float()
    weights = chosen.softmax(dim=-1) if scoring is Scoring.TOPK_SOFTMAX else chosen.sigmoid()
    return weights, ids


def _route_user(fn: RoutingFunction, logits: torch.Tensor, top_k: int):
    result = fn(logits, top_k)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError("a routing function must return a tuple (topk_weights, topk_ids)")
    weights, ids = result
    check_tensor("routing function's topk_weights", weights, dim=2)
    check_tensor("routing function's topk_ids", ids, dim=2, dtypes=(torch.int32, torch.int64))
    expected = (logits.shape[0], top_k)
    check_shape("routing function's topk_weights", weights, expected)
    check_shape("routing function's topk_ids", ids, expected)
    return weights.float(), ids
