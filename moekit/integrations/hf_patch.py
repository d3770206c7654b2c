"""``moekit.patch(model)``: replace each whole Hugging Face sparse-MoE block by a ``moekit.MoE``.

The replacement owns no new weights: its router, experts and shared-expert parameters are the
block's own tensors (the same ``Parameter`` objects, or views of them where moekit's layout is the
transpose of the block's, e.g. gpt-oss). Routing follows the block's router settings (which
transformers copies from the model config). A thin ``MoekitBlock`` keeps the block's call
contract: any ``[..., H]`` input, and gpt-oss's ``(hidden_states, router_scores)`` return.

Known blocks (by class name, then checked for the structure used here):

=======================  ======================================================================
MixtralSparseMoeBlock    softmax, always renormalized; router jitter in training
Qwen2MoeSparseMoeBlock   softmax, renormalize=norm_topk_prob; shared expert with a sigmoid gate
Qwen3MoeSparseMoeBlock   softmax, renormalize=norm_topk_prob
OlmoeSparseMoeBlock      softmax, renormalize=norm_topk_prob
DeepseekV3MoE            sigmoid, grouped top-k, correction bias, routed scaling; router in fp32;
                         shared experts
GptOssMLP                top-k on biased logits then softmax; swigluoai, interleaved, biases;
                         returns (hidden_states, router_scores)
=======================  ======================================================================

A block is replaced only once its whole replacement is built; one that cannot be served is left
as it is and the report says why. The patched model's state-dict keys change (``mlp.moe.w13``
instead of ``mlp.experts.gate_up_proj``): save checkpoints from an unpatched model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from moekit.integrations.hf_experts import HFExperts, act_fn_kind, read_experts
from moekit.layer import MoE
from moekit.oracle import BackendUnavailableError
from moekit.routing import RoutingConfig, Scoring


@dataclass(frozen=True)
class Replaced:
    name: str  # qualified module name in the model
    block_class: str  # the Hugging Face class it replaced
    backend: str  # the moekit experts backend chosen for it


@dataclass(frozen=True)
class LeftAlone:
    name: str
    block_class: str
    reason: str  # why moekit.patch did not replace it


@dataclass(frozen=True)
class PatchReport:
    """What ``moekit.patch`` did to a model; ``print(report)`` shows it as a table."""

    replaced: tuple[Replaced, ...]
    left_alone: tuple[LeftAlone, ...]  # MoE-looking modules not replaced, each with its reason

    def __str__(self) -> str:
        rows = [(r.name, r.block_class, f"replaced, backend {r.backend}") for r in self.replaced]
        rows += [(s.name, s.block_class, f"left alone: {s.reason}") for s in self.left_alone]
        head = f"moekit.patch: {len(self.replaced)} block(s) replaced, {len(self.left_alone)} left alone"
        if not rows:
            return head + " (no MoE blocks found)"
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("module", "block"))]
        lines = [head, f"{'module':<{widths[0]}}  {'block':<{widths[1]}}  result"]
        lines += [f"{n:<{widths[0]}}  {c:<{widths[1]}}  {what}" for n, c, what in rows]
        return "\n".join(lines)


class _Unsupported(Exception):
    """A known block this patch cannot serve; the message is the report's reason."""


@dataclass(frozen=True)
class _BlockPlan:
    """What a replacement needs from one Hugging Face block."""

    router: nn.Module  # .weight [E, H] (+ .bias [E] for gpt-oss)
    experts: nn.Module  # decorated by use_experts_implementation
    routing: RoutingConfig
    top_k: int
    correction_bias: torch.Tensor | None = None  # [E], DeepSeek-V3's e_score_correction_bias
    shared: nn.Module | None = None  # gate_proj / up_proj / down_proj MLP
    shared_gate: nn.Module | None = None  # Linear(H, 1), Qwen2-MoE
    router_in_fp32: bool = False  # DeepSeek-V3 runs its router linear in fp32
    returns_router_scores: bool = False  # gpt-oss returns (hidden_states, router_scores)
    jitter_noise: float = 0.0  # Mixtral's training-time input jitter


def _setting(router: nn.Module, config, attr: str, config_key: str | None = None):
    """A routing setting as the block's router uses it, else as the model config states it."""
    if hasattr(router, attr):
        return getattr(router, attr)
    key = config_key or attr
    if config is not None and hasattr(config, key):
        return getattr(config, key)
    raise _Unsupported(f"cannot read the routing setting {key!r} from the router or the model config")


def _plan_mixtral(block, config) -> _BlockPlan:
    return _BlockPlan(block.gate, block.experts, RoutingConfig(Scoring.SOFTMAX, renormalize=True),
                      int(_setting(block.gate, config, "top_k", "num_experts_per_tok")),
                      jitter_noise=float(getattr(block, "jitter_noise", 0.0) or 0.0))


def _plan_softmax_norm(block, config, **extra) -> _BlockPlan:
    """Qwen2-MoE, Qwen3-MoE, OLMoE: softmax, then renormalize if norm_topk_prob."""
    norm = bool(_setting(block.gate, config, "norm_topk_prob"))
    return _BlockPlan(block.gate, block.experts, RoutingConfig(Scoring.SOFTMAX, renormalize=norm),
                      int(_setting(block.gate, config, "top_k", "num_experts_per_tok")), **extra)


def _plan_qwen2_moe(block, config) -> _BlockPlan:
    return _plan_softmax_norm(block, config, shared=block.shared_expert, shared_gate=block.shared_expert_gate)


def _plan_deepseek_v3(block, config) -> _BlockPlan:
    gate = block.gate
    routing = RoutingConfig(
        Scoring.SIGMOID,
        renormalize=bool(_setting(gate, config, "norm_topk_prob")),
        num_groups=int(_setting(gate, config, "num_group", "n_group")),
        topk_groups=int(_setting(gate, config, "topk_group")),
        correction_bias=True,
        routed_scaling_factor=float(_setting(gate, config, "routed_scaling_factor")),
    )
    bias = getattr(gate, "e_score_correction_bias", None)
    if not isinstance(bias, torch.Tensor):
        raise _Unsupported("the router has no e_score_correction_bias tensor")
    return _BlockPlan(gate, block.experts, routing, int(_setting(gate, config, "top_k", "num_experts_per_tok")),
                      correction_bias=bias, shared=block.shared_experts, router_in_fp32=True)


def _plan_gpt_oss(block, config) -> _BlockPlan:
    routing = RoutingConfig(Scoring.TOPK_SOFTMAX, renormalize=False)  # softmax over the k already sums to 1
    return _BlockPlan(block.router, block.experts, routing,
                      int(_setting(block.router, config, "top_k", "num_experts_per_tok")),
                      returns_router_scores=True)


_PLANNERS: dict[str, Callable[[nn.Module, object], _BlockPlan]] = {
    "MixtralSparseMoeBlock": _plan_mixtral,
    "Qwen2MoeSparseMoeBlock": _plan_qwen2_moe,
    "Qwen3MoeSparseMoeBlock": _plan_softmax_norm,
    "OlmoeSparseMoeBlock": _plan_softmax_norm,
    "DeepseekV3MoE": _plan_deepseek_v3,
    "GptOssMLP": _plan_gpt_oss,
}
KNOWN_BLOCKS: tuple[str, ...] = tuple(_PLANNERS)


class MoekitBlock(nn.Module):
    """Stands in for a Hugging Face sparse-MoE block: the block's call contract, a moekit.MoE inside."""

    def __init__(self, moe: MoE, plan: _BlockPlan, block_class: str):
        super().__init__()
        self.moe = moe
        self.block_class = block_class
        self.returns_router_scores = plan.returns_router_scores
        self.jitter_noise = plan.jitter_noise

    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1]).to(self.moe.dtype)
        if self.training and self.jitter_noise > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        out, (topk_weights, _) = self.moe(x, return_routing=True)
        out = out.to(hidden_states.dtype).reshape(shape)
        if self.returns_router_scores:
            return out, topk_weights.to(x.dtype)
        return out

    def extra_repr(self) -> str:
        return f"replaces={self.block_class}"


def patch(model: nn.Module, *, backend: str | None = None, decode_graphs: int | None = None) -> PatchReport:
    """Replace, in place, every sparse-MoE block of ``model`` that moekit knows and can serve.

    ``backend`` names a moekit experts backend for every replaced block; a block it cannot serve
    raises ``BackendUnavailableError`` before any block is replaced. ``decode_graphs=N`` has every
    replaced block replay its forwards of up to N tokens from CUDA graphs (``MoE.use_decode_graphs``;
    a model not on a GPU is refused before any block is replaced)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    replacements, left_alone = [], []
    for name, block in _moe_looking_modules(model):
        cls = type(block).__name__
        if not name:
            left_alone.append(LeftAlone("(the model itself)", cls, "a block is replaced inside its parent: patch that"))
            continue
        try:
            replacements.append((name, _build_replacement(block, config, backend)))
        except BackendUnavailableError as err:
            if backend is not None:
                raise BackendUnavailableError(f"{name} ({cls}): {err}") from err
            left_alone.append(LeftAlone(name, cls, str(err)))
        except (_Unsupported, NotImplementedError, ValueError, TypeError) as err:
            left_alone.append(LeftAlone(name, cls, str(err)))
    if decode_graphs is not None:
        for _, adapter in replacements:
            adapter.moe.use_decode_graphs(decode_graphs)
    replaced = []
    for name, adapter in replacements:  # every replacement is built: now swap them in
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, adapter)
        replaced.append(Replaced(name, adapter.block_class, adapter.moe.explain().backend))
    return PatchReport(replaced=tuple(replaced), left_alone=tuple(left_alone))


def _moe_looking_modules(model: nn.Module):
    """(name, module) of each outermost module with an ``experts`` child or a known block class."""
    claimed: list[str] = []
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in claimed):
            continue
        if isinstance(module, (MoekitBlock, MoE)):  # patched already
            claimed.append(name)
            continue
        if type(module).__name__ in _PLANNERS or isinstance(getattr(module, "experts", None), nn.Module):
            claimed.append(name)
            yield name, module


def _build_replacement(block: nn.Module, config, backend: str | None) -> MoekitBlock:
    cls = type(block).__name__
    if cls not in _PLANNERS:
        raise _Unsupported(f"unknown block class; moekit.patch knows {', '.join(KNOWN_BLOCKS)}")
    if hasattr(block, "_hf_hook"):
        raise _Unsupported("the block carries an accelerate hook (offloading or a device map), which a swap would drop")
    try:
        plan = _PLANNERS[cls](block, config)
    except AttributeError as err:
        raise _Unsupported(f"not the {cls} structure moekit knows: {err}") from None
    experts = read_experts(plan.experts)
    _check_plan(plan, experts)
    moe = _adopt(plan, experts, backend)
    return MoekitBlock(moe, plan, cls)


def _check_plan(plan: _BlockPlan, experts: HFExperts) -> None:
    num_experts, hidden = experts.num_experts, experts.hidden_size
    weight = getattr(plan.router, "weight", None)
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (num_experts, hidden):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise _Unsupported(f"router weight must be [{num_experts}, {hidden}], got {shape}")
    bias = getattr(plan.router, "bias", None)
    if bias is not None and tuple(bias.shape) != (num_experts,):
        raise _Unsupported(f"router bias must be [{num_experts}], got {tuple(bias.shape)}")
    if plan.shared is not None:
        _check_shared(plan.shared, experts, hidden)
    if plan.shared_gate is not None:
        gate = plan.shared_gate
        if not isinstance(gate, nn.Linear) or gate.bias is not None or tuple(gate.weight.shape) != (1, hidden):
            raise _Unsupported(f"shared expert gate must be Linear({hidden}, 1) without bias")
    w = experts.weights
    codes = (w.w13, w.w2) if w.quant is None else (w.w13.data, w.w2.data)
    devices = {t.device for t in (weight, *codes, w.w13_bias, w.w2_bias) if t is not None}
    if len(devices) != 1:
        raise _Unsupported(f"router and experts must be on one device, got {sorted(map(str, devices))}")
    if codes[1].is_meta:
        raise _Unsupported("the weights are on the meta device (offloaded or not loaded)")


def _check_shared(shared: nn.Module, experts: HFExperts, hidden: int) -> None:
    for proj in ("gate_proj", "up_proj", "down_proj"):
        layer = getattr(shared, proj, None)
        if not isinstance(layer, nn.Linear) or layer.bias is not None:
            raise _Unsupported(f"shared expert {proj} must be an nn.Linear without bias")
    kind = act_fn_kind(getattr(shared, "act_fn", None))
    if kind is not experts.activation.kind:
        raise _Unsupported(
            f"shared expert activation {type(getattr(shared, 'act_fn', None)).__name__} differs from the "
            f"routed experts' {experts.activation.name}"
        )
    if shared.gate_proj.in_features != hidden or shared.down_proj.out_features != hidden:
        raise _Unsupported(f"shared expert must map hidden size {hidden} to itself")


def _adopt(plan: _BlockPlan, experts: HFExperts, backend: str | None) -> MoE:
    w = experts.weights
    moe = MoE(
        experts.num_experts, plan.top_k, experts.hidden_size, experts.intermediate_size,
        activation=experts.activation,
        routing=plan.routing,
        shared_intermediate_size=plan.shared.gate_proj.out_features if plan.shared is not None else None,
        quant=None if w.quant is None else w.quant.scheme,
        dtype=plan.router.weight.dtype if w.quant is not None else w.w2.dtype,
        device="meta",
        shared_expert_gate=plan.shared_gate is not None,
        expert_bias=w.w13_bias is not None,
        router_bias=getattr(plan.router, "bias", None) is not None,
        gate_up_layout=experts.gate_up_layout,
        router_dtype=torch.float32 if plan.router_in_fp32 else None,
        backend=backend,
    )
    moe.router.weight = _as_parameter(plan.router.weight)
    if moe.router.bias is not None:
        moe.router.bias = _as_parameter(plan.router.bias)
    if plan.correction_bias is not None:
        moe.correction_bias = plan.correction_bias  # a buffer: the router's own tensor
    names = _expert_tensor_names(plan.experts)
    if w.quant is not None:  # the block's own codes and scales become the layer's buffers (fp8: no copy of codes)
        for name, m in (("w13", w.w13), ("w2", w.w2)):
            for suffix, t in (("", m.data), ("_scale", m.scale)):
                setattr(moe, name + suffix, t.detach())
    else:
        moe.w13 = _as_parameter(w.w13, getattr(plan.experts, names[0]))
        moe.w2 = _as_parameter(w.w2, plan.experts.down_proj)
    if w.w13_bias is not None:
        moe.w13_bias = _as_parameter(w.w13_bias, getattr(plan.experts, names[1]))
        moe.w2_bias = _as_parameter(w.w2_bias, plan.experts.down_proj_bias)
    if plan.shared is not None:
        for proj in ("gate_proj", "up_proj", "down_proj"):
            getattr(moe.shared_experts, proj).weight = _as_parameter(getattr(plan.shared, proj).weight)
    if plan.shared_gate is not None:
        moe.shared_experts.shared_expert_gate.weight = _as_parameter(plan.shared_gate.weight)
    left_on_meta = [n for n, t in (*moe.named_parameters(), *moe.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise _Unsupported(f"internal: no block tensor for {left_on_meta}")
    moe.compose_kernel()
    return moe


def _expert_tensor_names(experts: nn.Module) -> tuple[str, str]:
    return ("gate_up_proj", "gate_up_proj_bias") if experts.has_gate else ("up_proj", "up_proj_bias")


def _as_parameter(view: torch.Tensor, original: torch.Tensor | None = None) -> nn.Parameter:
    """The block's own Parameter when ``view`` is all of it, else a Parameter sharing its storage."""
    original = view if original is None else original
    same = (view.shape == original.shape and view.stride() == original.stride()
            and view.storage_offset() == original.storage_offset() and view.data_ptr() == original.data_ptr())
    if same and isinstance(original, nn.Parameter):
        return original
    return nn.Parameter(view.detach(), requires_grad=original.requires_grad)


__all__ = ["KNOWN_BLOCKS", "LeftAlone", "MoekitBlock", "PatchReport", "Replaced", "patch"]
