"""moekit as a transformers experts implementation: ``experts_implementation="moekit"``.

transformers v5 keeps each MoE block's experts in one module decorated by
``use_experts_implementation``, which sends ``forward(hidden_states, top_k_index, top_k_weights)``
to the function registered under the model's ``experts_implementation``. Here that function reads
the module as moekit's logical layout (views only, never a copy), composes a moekit kernel once,
caches it on the module, and applies it. The Hugging Face router stays in charge of routing.

How the module's flags map onto moekit (``read_experts``):

- ``is_transposed``: ``gate_up_proj`` [E, H, 2I] and ``down_proj`` [E, I, H] are read through
  ``.transpose(-1, -2)`` views.
- ``is_concatenated``: True is ``GateUpLayout.CONCATENATED``, False ``GateUpLayout.INTERLEAVED``.
- ``has_bias``: ``gate_up_proj_bias`` (``up_proj_bias`` without a gate) and ``down_proj_bias``.
- ``has_gate`` False: ``up_proj`` [E, I, H] and ``act_fn``, which must be relu2.
- the default ``_apply_gate``: ``act_fn`` decides, silu (``SiLUActivation``, ``nn.SiLU``) or the
  exact gelu (``GELUActivation``); the tanh approximations and others are refused.
- a custom ``_apply_gate``: only gpt-oss's clamped SwiGLU, with ``alpha``/``limit`` (or
  ``swiglu_alpha``/``swiglu_limit``) attributes, and only if it agrees with moekit's
  ``swigluoai`` on a probe; anything else is refused.
- ``has_post_expert_norm`` and transformers' expert parallelism are refused.
- transformers' fine-grained fp8 experts (``FP8Experts``, 128 x 128 blocks) are served as moekit's
  ``fp8-block128`` on their own e4m3 codes and scales (hf_fp8_experts.py).

The views are not detached, so training through this path reaches the module's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moekit._checks import check_shape
from moekit.activations import Activation, ActivationKind, GateUpLayout, apply_activation
from moekit.experts.base import ExpertWeights
from moekit.hardware import current_environment
from moekit.integrations.hf_fp8_experts import is_fp8_experts, read_fp8_experts
from moekit.kernel.build import build_kernel
from moekit.kernel.modular import ModularKernel
from moekit.problem import MoEProblem

_CACHE_ATTR = "_moekit_kernel"  # (key, ModularKernel) on the Hugging Face experts module
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class HFExperts:
    """A Hugging Face experts module seen in moekit's layout: its own tensors or views of them."""

    weights: ExpertWeights  # w13 [E, 2I, H] (or [E, I, H]), w2 [E, H, I], biases [E, 2I] / [E, H]
    activation: Activation
    gate_up_layout: GateUpLayout

    @property
    def _w2_shape(self) -> tuple[int, int, int]:
        w2 = self.weights.w2
        return tuple((w2.data if self.weights.quant is not None else w2).shape)

    @property
    def num_experts(self) -> int:
        return self._w2_shape[0]

    @property
    def hidden_size(self) -> int:
        return self._w2_shape[1]

    @property
    def intermediate_size(self) -> int:
        return self._w2_shape[2]


def moekit_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The ``ExpertsInterface`` entry: hidden_states [T, H], top_k_index / top_k_weights [T, k].

    Returns [T, H] in hidden_states.dtype."""
    _check_servable(self)
    # The kernel computes in the weights' dtype (autocast may hand us fp32 activations); quantized
    # experts (fp8) in the activations' own dtype.
    dtype = self.down_proj.dtype if self.down_proj.dtype in _DTYPES else hidden_states.dtype
    kernel = experts_kernel(self, top_k_index.shape[-1], dtype)
    if top_k_index.dtype not in (torch.int32, torch.int64):
        top_k_index = top_k_index.long()
    out = kernel.apply(hidden_states.to(dtype), top_k_weights.float(), top_k_index)
    return out.to(hidden_states.dtype)


def experts_kernel(module: nn.Module, top_k: int, dtype: torch.dtype | None = None) -> ModularKernel:
    """The module's composed kernel, rebuilt when its tensors change (load, ``.to()``), top_k or the
    compute dtype does. ``dtype``: the activations' (default: the weights')."""
    _check_servable(module)
    # Views made under no_grad carry no autograd edge to the parameters: grad mode is part of the key.
    key = (top_k, dtype, torch.is_grad_enabled(), *(_identity(t) for t in _raw_tensors(module)))
    cached = module.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0] == key:
        return cached[1]
    experts = read_experts(module)
    quant = experts.weights.quant
    w2 = experts.weights.w2 if quant is None else experts.weights.w2.data
    problem = MoEProblem(
        num_experts=experts.num_experts,
        top_k=top_k,
        hidden_size=experts.hidden_size,
        intermediate_size=experts.intermediate_size,
        dtype=dtype if quant is not None and dtype is not None else w2.dtype,
        device_type=w2.device.type,
        activation=experts.activation,
        gate_up_layout=experts.gate_up_layout,
        quant="none" if quant is None else quant.scheme,
        has_bias=experts.weights.w13_bias is not None,
    )
    kernel, _ = build_kernel(problem, experts.weights, current_environment())
    # A plain attribute, not a submodule or buffer: the state dict and .to() never see it.
    module.__dict__[_CACHE_ATTR] = (key, kernel)
    return kernel


def read_experts(module: nn.Module) -> HFExperts:
    """Map a ``use_experts_implementation`` module onto moekit's layout, or say why it cannot be."""
    _check_servable(module)
    if is_fp8_experts(module):  # transformers' fine-grained fp8 experts: moekit's fp8-block128
        return read_fp8_experts(module)
    name = type(module).__name__
    layout = GateUpLayout.CONCATENATED if module.is_concatenated else GateUpLayout.INTERLEAVED
    first, bias_first = ("gate_up_proj", "gate_up_proj_bias") if module.has_gate else ("up_proj", "up_proj_bias")
    w13, w2 = _logical(module, first), _logical(module, "down_proj")
    b13 = _tensor(module, bias_first) if module.has_bias else None
    b2 = _tensor(module, "down_proj_bias") if module.has_bias else None
    if w2.dtype not in _DTYPES or w13.dtype != w2.dtype:
        raise NotImplementedError(
            f"{name}: expert weights of dtype {w13.dtype}/{w2.dtype} (quantized?) are not served by moekit's "
            f"transformers bridge; it takes {', '.join(map(str, _DTYPES))}"
        )
    _check_shapes(name, w13, w2, b13, b2, module.has_gate)
    activation = _activation_of(module, layout)
    return HFExperts(ExpertWeights(w13, w2, b13, b2), activation, layout)


def _check_servable(module: nn.Module) -> None:
    name = type(module).__name__
    for flag in ("has_gate", "has_bias", "is_transposed", "is_concatenated"):
        if not hasattr(module, flag):
            raise TypeError(f"{name} is not decorated by transformers' use_experts_implementation (no {flag!r})")
    if getattr(module, "has_post_expert_norm", False):
        raise NotImplementedError(f"{name}: a norm after each expert (has_post_expert_norm) is not supported by moekit")
    if getattr(module, "_is_expert_parallel", False):
        raise NotImplementedError(f"{name}: transformers' expert parallelism is not supported by moekit's experts")


def _raw_tensors(module: nn.Module) -> list[torch.Tensor]:
    names = ("gate_up_proj" if module.has_gate else "up_proj", "down_proj")
    if is_fp8_experts(module):
        names += ("gate_up_proj_scale_inv" if module.has_gate else "up_proj_scale_inv", "down_proj_scale_inv")
    if module.has_bias:
        names += ("gate_up_proj_bias" if module.has_gate else "up_proj_bias", "down_proj_bias")
    return [_tensor(module, n) for n in names]


def _identity(t: torch.Tensor) -> tuple:
    return id(t), t.data_ptr(), t.device, t.dtype, tuple(t.shape)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} must be a tensor for moekit, got {type(t).__name__}")
    return t


def _logical(module: nn.Module, name: str) -> torch.Tensor:
    """The weight as [E, out, in] (moekit's layout): a transposed view if the module stores [E, in, out]."""
    t = _tensor(module, name)  # not detached: gradients reach the module's parameters
    return t.transpose(-1, -2) if module.is_transposed else t


def _check_shapes(name, w13, w2, b13, b2, gated: bool) -> None:
    if w2.dim() != 3:
        raise ValueError(f"{name}.down_proj must be 3-D [E, H, I] (or [E, I, H] transposed), got {tuple(w2.shape)}")
    num_experts, hidden, inter = w2.shape
    rows = 2 * inter if gated else inter
    expected = {"w13": (w13, (num_experts, rows, hidden))}
    if b13 is not None:
        expected["w13_bias"] = (b13, (num_experts, rows))
        expected["w2_bias"] = (b2, (num_experts, hidden))
    for what, (t, shape) in expected.items():
        check_shape(f"{name}: {what} (moekit layout)", t, shape)


def _activation_of(module: nn.Module, layout: GateUpLayout) -> Activation:
    name = type(module).__name__
    act_fn = getattr(module, "act_fn", None)
    if not module.has_gate:
        if act_fn_kind(act_fn) is ActivationKind.RELU2:
            return Activation(ActivationKind.RELU2)
        raise NotImplementedError(f"{name}: experts without a gate need act_fn relu2, got {type(act_fn).__name__}")
    if not _has_custom_gate(module):
        kind = act_fn_kind(act_fn)
        if kind in (ActivationKind.SILU, ActivationKind.GELU):
            return Activation(kind)
        raise NotImplementedError(f"{name}: act_fn {type(act_fn).__name__} has no moekit activation (silu, gelu)")
    act = _swigluoai_of(module)
    if act is None or not _gate_matches(module, act, layout):
        raise NotImplementedError(
            f"{name}: its custom _apply_gate is not an activation moekit knows "
            "(only gpt-oss's clamped SwiGLU with alpha/limit attributes is recognised)"
        )
    return act


def act_fn_kind(act_fn) -> ActivationKind | None:
    """The moekit activation of a transformers ``act_fn`` instance, by its type (see ACT2CLS)."""
    from transformers import activations as hf_act

    if isinstance(act_fn, (hf_act.SiLUActivation, nn.SiLU)):
        return ActivationKind.SILU
    # GELUActivation is the exact erf GELU (F.gelu or its Python form); the tanh forms are other classes.
    if isinstance(act_fn, hf_act.GELUActivation) or (isinstance(act_fn, nn.GELU) and act_fn.approximate == "none"):
        return ActivationKind.GELU
    if isinstance(act_fn, hf_act.ReLUSquaredActivation):
        return ActivationKind.RELU2
    return None


def _has_custom_gate(module: nn.Module) -> bool:
    from transformers.integrations.moe import _default_apply_gate

    return getattr(type(module), "_apply_gate", _default_apply_gate) is not _default_apply_gate


def _swigluoai_of(module: nn.Module) -> Activation | None:
    for alpha_name, limit_name in (("alpha", "limit"), ("swiglu_alpha", "swiglu_limit")):
        alpha, limit = getattr(module, alpha_name, None), getattr(module, limit_name, None)
        if isinstance(alpha, (int, float)) and isinstance(limit, (int, float)):
            return Activation(ActivationKind.SWIGLUOAI, alpha=float(alpha), limit=float(limit))
    return None


def _gate_matches(module: nn.Module, act: Activation, layout: GateUpLayout) -> bool:
    """Run the module's own ``_apply_gate`` on a probe spanning the clamp and compare (float64)."""
    span = 3 * max(act.limit, 1.0)
    probe = torch.linspace(-span, span, 2 * 64, dtype=torch.float64).reshape(2, 64)
    probe = torch.cat([probe, probe.flip(-1)])  # both orders, so gate and up halves both see every value
    try:
        theirs = module._apply_gate(probe)
    except Exception:  # noqa: BLE001 -- a gate that cannot run on a probe is not one we recognise
        return False
    ours = apply_activation(probe, act, layout)
    return theirs.shape == ours.shape and torch.allclose(theirs, ours, rtol=1e-9, atol=1e-12)


__all__ = ["HFExperts", "act_fn_kind", "experts_kernel", "moekit_experts_forward", "read_experts"]
