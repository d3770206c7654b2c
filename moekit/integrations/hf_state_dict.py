"""Load one MoE block's weights from a Hugging Face state dict into a ``moekit.MoE``.

Keys are read relative to ``prefix`` (e.g. ``"model.layers.3.mlp."``); keys outside it are
ignored, every key inside it must be used (``strict=True``). Accepted names:

==============================================  ==================================================
router                                          ``gate.weight`` or ``router.weight`` [E, H];
                                                ``router.bias`` / ``gate.bias`` [E] (gpt-oss);
                                                ``gate.e_score_correction_bias`` [E] (DeepSeek-V3)
experts, fused (transformers v5)                ``experts.gate_up_proj`` [E, 2I, H],
                                                ``experts.down_proj`` [E, H, I]
experts, fused transposed (gpt-oss)             ``experts.gate_up_proj`` [E, H, 2I],
                                                ``experts.down_proj`` [E, I, H]
expert biases (gpt-oss)                         ``experts.gate_up_proj_bias`` [E, 2I],
                                                ``experts.down_proj_bias`` [E, H]
experts, one module each (Mixtral v4)           ``experts.{e}.w1.weight`` (gate), ``w3`` (up),
                                                ``w2`` (down); biases as ``experts.{e}.w1.bias`` ...
experts, one module each (Qwen, DeepSeek)       ``experts.{e}.gate_proj.weight``, ``up_proj``,
                                                ``down_proj``
experts without a gate (relu2)                  ``experts.up_proj`` [E, I, H] or
                                                ``experts.{e}.up_proj.weight``, and the down weights
shared experts                                  ``shared_expert.`` (Qwen2-MoE) or
                                                ``shared_experts.`` (DeepSeek) + ``gate_proj`` /
                                                ``up_proj`` / ``down_proj.weight``;
                                                ``shared_expert_gate.weight`` [1, H]
==============================================  ==================================================

Gate/up layout rule. A fused checkpoint's rows are *concatenated* (gate rows, then up rows, as
transformers' ``Concatenate(dim=1)`` builds them) unless it is transposed, which is gpt-oss's
layout and *interleaved* (gate0, up0, gate1, ...); ``checkpoint_gate_up`` overrides this guess.
Per-expert checkpoints keep gate and up apart. Rows are then arranged in the layer's own
``gate_up_layout`` (the bias rows likewise), so any checkpoint loads into either layer layout.

A missing tensor is always an error (a layer left half random is never intended); with
``strict=False`` unused keys under the prefix are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from moekit._checks import check_shape, check_tensor
from moekit.activations import GateUpLayout
from moekit.layer import MoE


class _Reader:
    """Takes tensors out of a state dict by their key relative to a prefix, checking shapes."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], prefix: str):
        self.prefix = prefix
        self.tensors = _PrefixView(state_dict, prefix)
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.tensors

    def first(self, *keys: str) -> str:
        """The first of ``keys`` present (the first one if none is, so the error names it)."""
        return next((k for k in keys if self.has(k)), keys[0])

    def take(self, key: str, shape: tuple[int, ...] | None = None, what: str = "") -> torch.Tensor:
        full = self._present(key, shape, what)
        t = self.tensors[key]
        check_tensor(repr(full), t)
        if shape is not None:
            check_shape(repr(full), t, shape)
        self.used.add(key)
        return t

    def take_rows(self, key: str, rows: tuple[int, ...] | None, shape: tuple[int, ...] | None = None,
                  what: str = "") -> torch.Tensor:
        """take(key), restricted to ``rows`` of dim 0 (all of them when None), in that order: a
        source that reads rows (CheckpointFiles) reads only those from disk. ``shape`` is checked
        against the whole tensor's."""
        if rows is None:
            return self.take(key, shape, what)
        full = self._present(key, shape, what)
        t, whole = self.tensors.rows(key, rows)
        label = repr(full) + (f" ({what})" if what else "")
        check_tensor(label, t)
        if shape is not None and whole != tuple(shape):
            raise ValueError(f"{label} must have shape {tuple(shape)}, got {whole}")
        self.used.add(key)
        return t

    def _present(self, key: str, shape, what: str) -> str:
        full = self.prefix + key
        if key not in self.tensors:
            detail = f" ({what}, shape {shape})" if what else (f" (shape {shape})" if shape else "")
            raise ValueError(f"missing tensor {full!r}{detail}")
        return full

    def unused(self) -> list[str]:
        return sorted(self.prefix + k for k in self.tensors if k not in self.used)


class _PrefixView(Mapping):
    """The keys under ``prefix`` of a state dict, relative to it; a value is only read when asked
    for, so a lazily loaded checkpoint (moekit.checkpoints.files) reads one block at a time."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], prefix: str):
        self._source = state_dict
        self._full = {k[len(prefix):]: k for k in state_dict.keys() if k.startswith(prefix)}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._source[self._full[key]]

    def rows(self, key: str, rows: tuple[int, ...]):
        """(rows ``rows`` of dim 0 of the tensor, the whole tensor's shape): read alone where the
        source can (``read_rows`` / ``shape_of``), else indexed out of the whole tensor."""
        name = self._full[key]
        if hasattr(self._source, "read_rows"):
            return self._source.read_rows(name, rows), tuple(self._source.shape_of(name))
        t = self._source[name]
        if not isinstance(t, torch.Tensor):
            return t, None
        return t[torch.tensor(rows, dtype=torch.long, device=t.device)], tuple(t.shape)

    def shape_of(self, key: str) -> tuple[int, ...] | None:
        """The tensor's shape without reading it where the source can (None: not a tensor)."""
        name = self._full[key]
        if hasattr(self._source, "shape_of"):
            return tuple(self._source.shape_of(name))
        t = self._source[name]
        return tuple(t.shape) if isinstance(t, torch.Tensor) else None

    def __iter__(self):
        return iter(self._full)

    def __len__(self) -> int:
        return len(self._full)

    def __contains__(self, key) -> bool:
        return key in self._full


def load_hf_state_dict(
    layer: MoE,
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = "",
    *,
    strict: bool = True,
    checkpoint_gate_up: str | GateUpLayout | None = None,
) -> None:
    """Copy one Hugging Face MoE block's tensors into ``layer`` (in place), then compose its kernel."""
    if not isinstance(layer, MoE):
        raise TypeError(f"layer must be a moekit.MoE, got {type(layer).__name__}")
    if checkpoint_gate_up is not None:
        checkpoint_gate_up = GateUpLayout(checkpoint_gate_up)
    reader = _Reader(state_dict, prefix)
    values = {**_read_router(layer, reader), **_read_experts(layer, reader, checkpoint_gate_up)}
    values.update(_read_shared(layer, reader))
    if strict and reader.unused():
        raise ValueError(f"unexpected tensor(s) for this MoE layer: {reader.unused()}")
    with torch.no_grad():
        for name, value in values.items():
            target = layer.get_parameter(name) if name != "correction_bias" else layer.correction_bias
            target.copy_(value)
    layer.compose_kernel()


def _read_router(layer: MoE, reader: _Reader) -> dict[str, torch.Tensor]:
    e, h = layer.num_experts, layer.hidden_size
    out = {"router.weight": reader.take(reader.first("gate.weight", "router.weight"), (e, h), "router.weight")}
    if layer.router.bias is not None:
        out["router.bias"] = reader.take(reader.first("router.bias", "gate.bias"), (e,), "router.bias")
    if layer.correction_bias is not None:
        out["correction_bias"] = reader.take("gate.e_score_correction_bias", (e,), "correction_bias")
    return out


def _read_experts(layer: MoE, reader: _Reader, checkpoint_gate_up) -> dict[str, torch.Tensor]:
    """The layer's expert tensors (its own experts only, for an expert-parallel layer: per-expert
    tensors of other ranks' experts are never read; of fused tensors only the own experts' rows,
    where the source reads rows: moekit.load's checkpoint files)."""
    gated = layer.activation.gated
    first = "gate_up_proj" if gated else "up_proj"
    fused = [k for k in (f"experts.{first}", "experts.down_proj") if reader.has(k)]
    names = _per_expert_names(reader, gated)
    if fused and names is not None:
        raise ValueError(
            f"both fused ({reader.prefix}{fused[0]}) and per-expert ({reader.prefix}experts.0.{names[0]}.weight, ...) "
            "expert tensors given; a checkpoint has one layout"
        )
    if fused:
        return _read_fused(layer, reader, first, checkpoint_gate_up)
    if names is None:
        e, h, i = layer.num_experts, layer.hidden_size, layer.intermediate_size
        rows = 2 * i if gated else i
        example = "experts.0.w1.weight / experts.0.gate_proj.weight" if gated else "experts.0.up_proj.weight"
        raise ValueError(
            f"missing the experts' weights under {reader.prefix!r}: expected {reader.prefix}experts.{first} "
            f"[{e}, {rows}, {h}] and {reader.prefix}experts.down_proj [{e}, {h}, {i}], or per-expert {example}"
        )
    return _read_per_expert(layer, reader, names)


def _read_fused(layer: MoE, reader: _Reader, first: str, checkpoint_gate_up) -> dict[str, torch.Tensor]:
    """Fused [E, ...] expert tensors: the layer's own experts' rows of each (all without expert
    parallelism)."""
    e, h, i = layer.num_experts, layer.hidden_size, layer.intermediate_size
    rows = 2 * i if layer.activation.gated else i
    own = own_expert_rows(layer)
    transposed = _fused_is_transposed(reader, first, (e, rows, h), (e, h, i))
    if transposed:
        w13 = reader.take_rows(f"experts.{first}", own, (e, h, rows), "w13, transposed").transpose(1, 2)
        w2 = reader.take_rows("experts.down_proj", own, (e, i, h), "w2, transposed").transpose(1, 2)
    else:
        w13 = reader.take_rows(f"experts.{first}", own, (e, rows, h), "w13")
        w2 = reader.take_rows("experts.down_proj", own, (e, h, i), "w2")
    source = checkpoint_gate_up or (GateUpLayout.INTERLEAVED if transposed else GateUpLayout.CONCATENATED)
    out = {"w13": _to_layout(w13, source, layer), "w2": w2}
    if layer.w13_bias is not None:
        b13 = reader.take_rows(f"experts.{first}_bias", own, (e, rows), "w13_bias")
        out["w13_bias"] = _to_layout(b13, source, layer)
        out["w2_bias"] = reader.take_rows("experts.down_proj_bias", own, (e, h), "w2_bias")
    return out


def own_expert_rows(layer: MoE) -> tuple[int, ...] | None:
    """Rows of fused [E, ...] expert tensors that the layer keeps: its local experts in local order
    (expert parallel), or None for all of them."""
    return None if layer.parallel is None else tuple(layer.local_experts)


def _fused_is_transposed(reader: _Reader, first: str, w13_shape, w2_shape) -> bool:
    """Decide by shape: [E, 2I, H] / [E, H, I] or gpt-oss's [E, H, 2I] / [E, I, H]. Where one tensor's
    two readings coincide (2I == H, or I == H) the other decides; both cannot coincide for a gated
    layer, and for an ungated one with I == H the untransposed reading (transformers' default) wins."""
    def reading(key, normal):
        shape = reader.tensors.shape_of(key) if key in reader.tensors else None
        if shape is None:
            return None
        flipped = (normal[0], normal[2], normal[1])
        if shape == normal and shape == flipped:
            return None
        return True if shape == flipped else (False if shape == normal else None)

    votes = {reading(f"experts.{first}", w13_shape), reading("experts.down_proj", w2_shape)} - {None}
    return votes == {True}


def _to_layout(rows_tensor: torch.Tensor, source: GateUpLayout, layer: MoE) -> torch.Tensor:
    """Rearrange gate/up rows (dim 1 of [E, 2I, ...]) from ``source`` into the layer's layout."""
    if not layer.activation.gated or source is layer.gate_up_layout:
        return rows_tensor
    if source is GateUpLayout.INTERLEAVED:  # -> concatenated: even rows (gate) first, then odd rows (up)
        return torch.cat([rows_tensor[:, 0::2], rows_tensor[:, 1::2]], dim=1)
    gate, up = rows_tensor.chunk(2, dim=1)  # concatenated -> interleaved
    return torch.stack([gate, up], dim=2).flatten(1, 2)


_PER_EXPERT = {True: (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj")),
               False: (("up_proj", "down_proj"),)}


def _per_expert_names(reader: _Reader, gated: bool) -> tuple[str, ...] | None:
    """The per-expert module names the checkpoint uses ((gate,) up, down): the first naming of which
    any module is present (so a missing one is named by the error), or None."""
    present = {m.group(1) for k in reader.tensors if (m := re.fullmatch(r"experts\.\d+\.(\w+)\.(weight|bias)", k))}
    return next((names for names in _PER_EXPERT[gated] if set(names) & present), None)


def _read_per_expert(layer: MoE, reader: _Reader, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    h, i = layer.hidden_size, layer.intermediate_size
    *firsts, down = names  # (gate, up) or (up,)
    has_bias = layer.w13_bias is not None
    experts = experts_to_read(layer, reader)

    def take_all(name: str, suffix: str, shape) -> torch.Tensor:
        return torch.stack([reader.take(f"experts.{x}.{name}.{suffix}", shape) for x in experts])

    first_rows = [take_all(n, "weight", (i, h)) for n in firsts]  # gate and up kept apart until here
    out = {"w13": _assemble(first_rows, layer), "w2": take_all(down, "weight", (h, i))}
    if has_bias:
        out["w13_bias"] = _assemble([take_all(n, "bias", (i,)) for n in firsts], layer)
        out["w2_bias"] = take_all(down, "bias", (h,))
    return out


def experts_to_read(layer: MoE, reader: _Reader) -> tuple[int, ...]:
    """All experts, or an expert-parallel layer's own (in its local order): the other experts'
    per-expert tensors are marked as seen, so the strict check does not call them unexpected, and
    are never read."""
    if layer.parallel is None:
        return tuple(range(layer.num_experts))
    mine = set(layer.local_experts)
    for key in reader.tensors:
        m = re.match(r"experts\.(\d+)\.", key)
        if m and int(m.group(1)) not in mine and int(m.group(1)) < layer.num_experts:
            reader.used.add(key)
    return layer.local_experts


def _assemble(parts: list[torch.Tensor], layer: MoE) -> torch.Tensor:
    """[gate, up] (each [E, I, ...]) -> [E, 2I, ...] in the layer's layout; [up] -> up."""
    if len(parts) == 1:
        return parts[0]
    if layer.gate_up_layout is GateUpLayout.INTERLEAVED:
        return torch.stack(parts, dim=2).flatten(1, 2)
    return torch.cat(parts, dim=1)


def shared_expert_projections(layer: MoE, names) -> tuple[str, dict[str, tuple[int, int]]]:
    """Where a block's shared experts live among the tensor ``names`` (Qwen2-MoE's "shared_expert"
    or DeepSeek's "shared_experts") and each projection's [out, in] shape."""
    shared = layer.shared_experts
    h, si = layer.hidden_size, shared.up_proj.out_features
    base = "shared_expert" if any(k.startswith("shared_expert.") for k in names) else "shared_experts"
    projections = {"up_proj": (si, h), "down_proj": (h, si)}
    if shared.gate_proj is not None:
        projections = {"gate_proj": (si, h), **projections}
    return base, projections


def _read_shared(layer: MoE, reader: _Reader) -> dict[str, torch.Tensor]:
    shared = layer.shared_experts
    if shared is None:
        return {}
    h = layer.hidden_size
    base, projections = shared_expert_projections(layer, reader.tensors)
    out = {f"shared_experts.{p}.weight": reader.take(f"{base}.{p}.weight", shape, f"shared {p}")
           for p, shape in projections.items()}
    if shared.shared_expert_gate is not None:
        out["shared_experts.shared_expert_gate.weight"] = reader.take("shared_expert_gate.weight", (1, h),
                                                                     "shared expert gate")
    return out


__all__ = ["load_hf_state_dict"]
