"""A model's config.json -> the ``moekit.MoE(...)`` arguments of its MoE blocks.

The config is read with transformers' ``AutoConfig`` (so a field a checkpoint leaves out takes the
model class's default, as transformers would run it). One function per family states the mapping;
which layers are MoE blocks is read from the checkpoint's tensor names (moekit.load), not from
per-family layer rules.

==============  ===============================================================================
mixtral         softmax, renormalized; ``num_local_experts``, ``intermediate_size``
qwen2_moe       softmax, renormalize = ``norm_topk_prob``; shared expert
                (``shared_expert_intermediate_size``) with a sigmoid gate
qwen3_moe       softmax, renormalize = ``norm_topk_prob``; ``moe_intermediate_size``
olmoe           softmax, renormalize = ``norm_topk_prob``
deepseek_v3     sigmoid, grouped top-k (``n_group``/``topk_group``), correction bias,
                ``routed_scaling_factor``; router in fp32; ``n_shared_experts`` x
                ``moe_intermediate_size`` shared experts
gpt_oss         top-k then softmax; swigluoai (``swiglu_limit``), interleaved gate/up, biases
==============  ===============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from moekit.activations import Activation, ActivationKind
from moekit.routing import RoutingConfig, Scoring


def read_config(path: str | Path):
    """transformers' config object for the checkpoint directory ``path``."""
    from transformers import AutoConfig

    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"no config.json in {str(path)!r}")
    return AutoConfig.from_pretrained(str(path))


def moe_arguments(config) -> dict:
    """``MoE(**arguments)`` for one of the model's MoE blocks (quant, dtype and device left out)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(f"model_type {family!r} is not supported by moekit.load; known: {sorted(FAMILIES)}")
    return FAMILIES[family](config)


def config_dtype(config) -> torch.dtype:
    """The checkpoint's activation dtype (config ``dtype`` / ``torch_dtype``), bfloat16 if unset."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.bfloat16
    return getattr(torch, value) if isinstance(value, str) else value


def _softmax(config, experts: str, intermediate: str, renormalize: bool | None = None, **extra) -> dict:
    norm = bool(getattr(config, "norm_topk_prob", False)) if renormalize is None else renormalize
    return dict(num_experts=getattr(config, experts), top_k=config.num_experts_per_tok,
                hidden_size=config.hidden_size, intermediate_size=getattr(config, intermediate),
                activation=config.hidden_act, routing=RoutingConfig(Scoring.SOFTMAX, renormalize=norm), **extra)


def _mixtral(config) -> dict:
    return _softmax(config, "num_local_experts", "intermediate_size", renormalize=True)


def _qwen2_moe(config) -> dict:
    return _softmax(config, "num_experts", "moe_intermediate_size",
                    shared_intermediate_size=config.shared_expert_intermediate_size, shared_expert_gate=True)


def _qwen3_moe(config) -> dict:
    return _softmax(config, "num_experts", "moe_intermediate_size")


def _olmoe(config) -> dict:
    return _softmax(config, "num_experts", "intermediate_size")


def _deepseek_v3(config) -> dict:
    routing = RoutingConfig(Scoring.SIGMOID, renormalize=bool(config.norm_topk_prob), num_groups=config.n_group,
                            topk_groups=config.topk_group, correction_bias=True,
                            routed_scaling_factor=float(config.routed_scaling_factor))
    shared = config.n_shared_experts * config.moe_intermediate_size if config.n_shared_experts else None
    return dict(num_experts=config.n_routed_experts, top_k=config.num_experts_per_tok,
                hidden_size=config.hidden_size, intermediate_size=config.moe_intermediate_size,
                activation=config.hidden_act, routing=routing, shared_intermediate_size=shared,
                router_dtype=torch.float32)


def _gpt_oss(config) -> dict:
    activation = Activation(ActivationKind.SWIGLUOAI, limit=float(getattr(config, "swiglu_limit", 7.0)))
    return dict(num_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
                hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                activation=activation, routing=RoutingConfig(Scoring.TOPK_SOFTMAX, renormalize=False),
                router_bias=True, expert_bias=True, gate_up_layout="interleaved")


FAMILIES: dict[str, Callable[[object], dict]] = {
    "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen3_moe, "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3, "gpt_oss": _gpt_oss,
}

__all__ = ["FAMILIES", "config_dtype", "moe_arguments", "read_config"]
