"""Load one MoE block — router, routed experts, shared experts — of a quantized checkpoint's state
dict into a ``moekit.MoE``.

Keys are read relative to ``prefix`` (e.g. ``"model.layers.3.mlp."``), as in
``moekit.load_hf_state_dict``. The routed experts keep the checkpoint's quantization (the layer's
``quant`` must be the scheme the quantization config gives them); the router and the shared
experts run dense in the layer's dtype, so if the checkpoint quantized them they are dequantized
here (a projection counts as quantized when it has quantization tensors: DeepSeek-V3's router is
no ``nn.Linear``, so transformers never converts it although its fp8 config does not exclude it).

Order: every tensor is read and checked, then converted, then handed to
``MoE.set_quantized_experts`` (which checks again before assigning), and only then are the router
and shared-expert weights copied in; so a refused checkpoint leaves the layer as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from moekit.checkpoints import compressed_tensors, gpt_oss_mxfp4, hf_fp8
from moekit.checkpoints.per_expert import Experts, module_names, read_per_expert
from moekit.checkpoints.projection import PendingProjection
from moekit.integrations.hf_state_dict import _read_experts as _read_float_experts
from moekit.integrations.hf_state_dict import _Reader, shared_expert_projections
from moekit.layer import MoE
from moekit.quant.dequant import dequantize
from moekit.quant.factory import COMPRESSED_TENSORS, HF_FP8, LayerQuant, layer_quant
from moekit.quant.registry import UNQUANTIZED, method_for

# Tensors that mark a projection as quantized, in any layout moekit reads.
_QUANT_SUFFIXES = ("weight_scale", "weight_scale_inv", "weight_packed", "weight_global_scale")


def load_quantized_state_dict(layer: MoE, state_dict: Mapping[str, torch.Tensor], prefix: str = "",
                              quant_config: dict | None = None, *, strict: bool = True) -> None:
    """Copy one MoE block of a (quantized) checkpoint into ``layer`` in place, then compose its kernel.

    ``quant_config`` is config.json's ``quantization_config``; layer names for its ignore lists and
    targets are ``prefix`` + the tensor's module (``model.layers.3.mlp.experts.0.gate_proj``)."""
    if not isinstance(layer, MoE):
        raise TypeError(f"layer must be a moekit.MoE, got {type(layer).__name__}")
    reader = _Reader(state_dict, prefix)

    def quant_of(module: str) -> LayerQuant:
        return layer_quant(quant_config, prefix + module)

    dense = _read_router(layer, reader, quant_of)
    if layer.quant_method is None:
        float_experts = _read_float_experts(layer, reader, None)
        experts = None
    else:
        float_experts, experts = {}, _read_quantized_experts(layer, reader, quant_of)
    dense.update(_read_shared(layer, reader, quant_of))
    if strict and reader.unused():
        raise ValueError(f"unexpected tensor(s) for this MoE layer: {reader.unused()}")

    converted = experts() if experts is not None else None
    values = {name: make() for name, make in dense.items()} | float_experts
    if converted is not None:
        layer.set_quantized_experts(converted.w13, converted.w2, converted.a13_scale, converted.a2_scale,
                                    experts_are_local=converted.local)
        if converted.w13_bias is not None:
            values |= {"w13_bias": converted.w13_bias, "w2_bias": converted.w2_bias}
    with torch.no_grad():  # (expert biases come as the layer's own experts: the readers take its rows)
        for name, value in values.items():
            target = layer.correction_bias if name == "correction_bias" else layer.get_parameter(name)
            target.copy_(value)
    layer.compose_kernel()


def _read_quantized_experts(layer: MoE, reader: _Reader, quant_of) -> Callable[[], Experts]:
    if gpt_oss_mxfp4.has_layout(reader):
        return gpt_oss_mxfp4.read_experts(layer, reader)
    names = module_names(reader, layer.activation.gated)
    if names is None:
        e, first = layer.num_experts, "gate_proj" if layer.activation.gated else "up_proj"
        raise ValueError(f"missing the experts' weights under {reader.prefix!r}: expected per-expert projections "
                         f"{reader.prefix}experts.{{0..{e - 1}}}.{first}.* (or w1/w3/w2), or gpt-oss's "
                         f"{reader.prefix}experts.gate_up_proj_blocks")
    return read_per_expert(layer, reader, quant_of, read_projection, names)


def read_projection(reader, key: str, quant: LayerQuant, method, n: int, k: int) -> PendingProjection:
    """One quantized linear projection, by the layout its config names."""
    if quant.method == COMPRESSED_TENSORS:
        return compressed_tensors.read_projection(reader, key, quant, method, n, k)
    if quant.method == HF_FP8:
        return hf_fp8.read_projection(reader, key, quant, method, n, k)
    raise ValueError(f"{reader.prefix}{key}: scheme {quant.scheme!r} from a {quant.method!r} config is only read "
                     "from gpt-oss's fused expert tensors (experts.gate_up_proj_blocks, ...)")


def _dense_weight(layer: MoE, reader: _Reader, module: str, shape: tuple[int, int], quant_of) -> Callable:
    """A dense [N, K] weight in the layer's dtype: as stored, or dequantized if the checkpoint quantized it."""
    quantized = any(reader.has(f"{module}.{s}") for s in _QUANT_SUFFIXES)
    if not quantized:
        t = reader.take(f"{module}.weight", shape)
        return lambda: t
    quant = quant_of(module)
    if quant.scheme == UNQUANTIZED:
        raise ValueError(f"{reader.prefix}{module} has quantization tensors but the quantization config leaves "
                         "it unquantized (ignored or not targeted)")
    method = method_for(quant.scheme)
    pending = read_projection(reader, module, quant, method, *shape)
    return lambda: dequantize(pending().matrix, method.spec, expert=0).to(layer.dtype)


def _read_router(layer: MoE, reader: _Reader, quant_of) -> dict[str, Callable]:
    e, h = layer.num_experts, layer.hidden_size
    module = "router" if any(k.startswith("router.") for k in reader.tensors) else "gate"
    out = {"router.weight": _dense_weight(layer, reader, module, (e, h), quant_of)}
    if layer.router.bias is not None:
        bias = reader.take(f"{module}.bias", (e,), "router.bias")
        out["router.bias"] = lambda: bias
    if layer.correction_bias is not None:
        correction = reader.take("gate.e_score_correction_bias", (e,), "correction_bias")
        out["correction_bias"] = lambda: correction
    return out


def _read_shared(layer: MoE, reader: _Reader, quant_of) -> dict[str, Callable]:
    shared = layer.shared_experts
    if shared is None:
        return {}
    h = layer.hidden_size
    base, shapes = shared_expert_projections(layer, reader.tensors)
    out = {f"shared_experts.{p}.weight": _dense_weight(layer, reader, f"{base}.{p}", shape, quant_of)
           for p, shape in shapes.items()}
    if shared.shared_expert_gate is not None:
        out["shared_experts.shared_expert_gate.weight"] = _dense_weight(layer, reader, "shared_expert_gate", (1, h),
                                                                        quant_of)
    return out


__all__ = ["load_quantized_state_dict"]
