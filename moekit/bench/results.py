"""A run's results as plain data: what the report prints, the plot draws and ``--json`` writes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from moekit.bench.ceilings import Ceilings
from moekit.bench.floor import Floor

# The variants of every cell, in the report's order.
MOEKIT = "moekit"  # moekit.fused_moe on precomputed routing, CUDA-graph replay
MOEKIT_ROUTING = "moekit_routing"  # the moekit.MoE layer's forward, router and routing included
GROUPED_MM = "grouped_mm"  # moekit.fused_moe(backend="torch-grouped-mm"), eager
HF_LOOP = "hf_loop"  # the transformers-style eager loop over experts
VARIANTS = (MOEKIT, MOEKIT_ROUTING, GROUPED_MM, HF_LOOP)
LABELS = {MOEKIT: "moekit", MOEKIT_ROUTING: "moekit+routing", GROUPED_MM: "grouped_mm", HF_LOOP: "hf loop"}


@dataclass
class VariantResult:
    name: str
    us: float | None = None  # median µs; None when the variant failed or was refused
    mode: str | None = None  # "graph" (CUDA-graph replay) or "eager"
    capture_error: str | None = None  # graph capture failed, so ``us`` is eager
    error: str | None = None  # why there is no time ("refused: ..." for a backend's refusal)
    rel_error: float | None = None  # vs the float32 reference, on input set 0
    finite: bool | None = None
    passed: bool | None = None


@dataclass
class Cell:
    tokens: int
    floor: Floor | None = None
    variants: dict[str, VariantResult] = field(default_factory=dict)
    error: str | None = None  # the whole cell failed (e.g. out of memory for its inputs)

    @property
    def floor_us(self) -> float | None:
        return None if self.floor is None else self.floor.seconds * 1e6

    def us(self, name: str) -> float | None:
        v = self.variants.get(name)
        return None if v is None else v.us

    def pct_of_floor(self, name: str) -> float | None:
        us, floor_us = self.us(name), self.floor_us
        return None if us is None or floor_us is None or us <= 0 else 100.0 * floor_us / us

    def speedup_vs_grouped_mm(self) -> float | None:
        ours, theirs = self.us(MOEKIT), self.us(GROUPED_MM)
        return None if ours is None or theirs is None or ours <= 0 else theirs / ours

    @property
    def passed(self) -> bool:
        """moekit's outputs (with and without routing) were produced and are correct."""
        if self.error is not None:
            return False
        return all(self.variants.get(n) is not None and self.variants[n].passed for n in (MOEKIT, MOEKIT_ROUTING))


@dataclass
class ShapeResult:
    preset: str
    model: str
    num_experts: int
    top_k: int
    hidden: int
    intermediate: int
    activation: str
    gate_up_layout: str
    expert_bias: bool
    backend: str | None = None  # layer.explain().backend
    cells: list[Cell] = field(default_factory=list)
    error: str | None = None  # the layer could not be built (e.g. out of memory)

    def describe(self) -> str:
        extras = [self.activation]
        if self.gate_up_layout != "concatenated":
            extras.append(f"{self.gate_up_layout} gate/up")
        if self.expert_bias:
            extras.append("expert biases")
        return (f"{self.model} ({self.preset}): E={self.num_experts} top_k={self.top_k} H={self.hidden} "
                f"I={self.intermediate}, {', '.join(extras)}")


@dataclass
class BenchResults:
    environment: dict
    ceilings: Ceilings | None
    dtype: str
    input_sets: int
    command: str
    timing: dict = field(default_factory=dict)  # how the medians were taken
    shapes: list[ShapeResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.error is None and all(c.passed for c in s.cells) for s in self.shapes)

    def to_dict(self) -> dict:
        """JSON-ready: derived numbers (floor µs, % of floor, speedup) included; NaN written as null."""
        ceilings = None
        if self.ceilings is not None:
            ceilings = dataclasses.asdict(self.ceilings) | {"bandwidth_bytes_per_s": self.ceilings.bandwidth}
        return _finite({
            "environment": self.environment, "ceilings": ceilings, "dtype": self.dtype,
            "input_sets": self.input_sets, "command": self.command, "timing": self.timing, "passed": self.passed,
            "shapes": [_shape_dict(s) for s in self.shapes],
        })


def _shape_dict(shape: ShapeResult) -> dict:
    fields = {f.name: getattr(shape, f.name) for f in dataclasses.fields(shape) if f.name != "cells"}
    return fields | {"cells": [_cell_dict(c) for c in shape.cells]}


def _cell_dict(cell: Cell) -> dict:
    floor = None
    if cell.floor is not None:
        floor = dataclasses.asdict(cell.floor) | {"us": cell.floor_us, "bound": cell.floor.bound}
    variants = {name: dataclasses.asdict(v) | {"pct_of_floor": cell.pct_of_floor(name)}
                for name, v in cell.variants.items()}
    return {"tokens": cell.tokens, "floor": floor, "variants": variants,
            "speedup_vs_grouped_mm": cell.speedup_vs_grouped_mm(), "passed": cell.passed, "error": cell.error}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
