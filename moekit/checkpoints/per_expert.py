"""Per-expert checkpoints (``experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj``, or Mixtral's
``w1`` / ``w3`` / ``w2``), each projection quantized on its own: read every projection of every
expert (validated), then stack them into w13 and w2 in moekit's quantized layout."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moekit.checkpoints import gate_up
from moekit.checkpoints.projection import PendingProjection, Projection
from moekit.integrations.hf_state_dict import _PER_EXPERT, experts_to_read
from moekit.quant.factory import LayerQuant
from moekit.quant.spec import QuantizedMatrix

# (reader, key, LayerQuant, method, N, K) -> a validated projection, converted when called
ProjectionReader = Callable[..., PendingProjection]


@dataclass(frozen=True)
class Experts:
    """A block's routed experts, converted: what ``MoE.set_quantized_experts`` takes."""

    w13: QuantizedMatrix
    w2: QuantizedMatrix
    a13_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None
    w13_bias: torch.Tensor | None = None  # already in the layer's gate/up layout
    w2_bias: torch.Tensor | None = None
    local: bool = False  # only the layer's own experts (expert parallel), in its local order


def module_names(reader, gated: bool) -> tuple[str, ...] | None:
    """The per-expert projection names the checkpoint uses ((gate,) up, down), or None."""
    present = {m.group(1) for k in reader.tensors if (m := re.fullmatch(r"experts\.\d+\.(\w+)\.\w+", k))}
    return next((names for names in _PER_EXPERT[gated] if set(names) & present), None)


def read_per_expert(layer, reader, quant_of: Callable[[str], LayerQuant], read_projection: ProjectionReader,
                    names: tuple[str, ...]) -> Callable[[], Experts]:
    """Validate every expert projection under ``reader`` and return the conversion into ``Experts``.
    An expert-parallel layer reads only its own experts' tensors (the others are skipped, unread)."""
    h, i = layer.hidden_size, layer.intermediate_size
    experts = experts_to_read(layer, reader)
    method = layer.quant_method
    gate_up.check_layout(method.spec, layer.gate_up_layout, i, f"MoE block {reader.prefix!r}")
    *firsts, down = names

    def read_all(name: str, n: int, k: int) -> list[PendingProjection]:
        pending = []
        for x in experts:
            key = f"experts.{x}.{name}"
            quant = quant_of(key)
            if quant.scheme != layer.quant:
                raise ValueError(f"{reader.prefix}{key}: its quantization is {quant.scheme!r} but the layer's is "
                                 f"{layer.quant!r}; every routed expert projection of a block must share one scheme")
            pending.append(read_projection(reader, key, quant, method, n, k))
        return pending

    first_pending = [read_all(name, i, h) for name in firsts]
    down_pending = read_all(down, h, i)
    biases = _read_biases(layer, reader, firsts, down, experts) if layer.w13_bias is not None else None

    def convert() -> Experts:
        firsts_done = [_stack([p() for p in pending]) for pending in first_pending]
        down_done = _stack([p() for p in down_pending])
        if len(firsts_done) == 2:
            full = f"{reader.prefix}experts.{{e}}."
            w13 = gate_up.combine(firsts_done[0][0], firsts_done[1][0], method.spec, layer.gate_up_layout,
                                  full + firsts[0], full + firsts[1])
        else:
            w13 = firsts_done[0][0]
        a13 = _max_scale([s for _, s in firsts_done])
        w13_bias, w2_bias = biases() if biases is not None else (None, None)
        return Experts(w13, down_done[0], a13, down_done[1], w13_bias, w2_bias, local=layer.parallel is not None)

    return convert


def _stack(parts: list[Projection]) -> tuple[QuantizedMatrix, torch.Tensor | None]:
    """One-expert matrices -> [E, ...]; static input scales -> their maximum (one per layer input)."""
    first = parts[0].matrix
    fields = {f: None if getattr(first, f) is None else torch.cat([getattr(p.matrix, f) for p in parts])
              for f in ("data", "scale", "zero", "g_idx", "global_scale")}
    scales = [p.input_scale for p in parts if p.input_scale is not None]
    return QuantizedMatrix(**fields), (torch.stack(scales).max() if scales else None)


def _max_scale(scales: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [s for s in scales if s is not None]
    return torch.stack(present).max() if present else None


def _read_biases(layer, reader, firsts, down, experts):
    from moekit.integrations.hf_state_dict import _assemble

    h, i = layer.hidden_size, layer.intermediate_size
    first = [torch.stack([reader.take(f"experts.{x}.{n}.bias", (i,)) for x in experts]) for n in firsts]
    second = torch.stack([reader.take(f"experts.{x}.{down}.bias", (h,)) for x in experts])
    return lambda: (_assemble(first, layer), second)
