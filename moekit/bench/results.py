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


def short_dtype(dtype: str) -> str:
    """"bfloat16" -> "bf16", as the tables and plots name the unquantized forward."""
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)


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
class QuantCell:
    """One quant scheme in one cell: the quantized layer's forward on the cell's inputs (routing
    excluded, CUDA-graph replay), against its own floor (packed bytes, the scheme's matmul rate)."""

    scheme: str
    floor: Floor | None = None
    result: VariantResult | None = None  # rel_error is against the reference on the dequantized weights
    tolerance: float | None = None  # the bound rel_error was checked against
    error: str | None = None  # the scheme's cell failed before its forward could be timed

    @property
    def us(self) -> float | None:
        return None if self.result is None else self.result.us

    @property
    def floor_us(self) -> float | None:
        return None if self.floor is None else self.floor.seconds * 1e6

    @property
    def pct_of_floor(self) -> float | None:
        return _pct(self.floor_us, self.us)

    @property
    def passed(self) -> bool:
        return self.error is None and self.result is not None and bool(self.result.passed)


@dataclass
class Cell:
    tokens: int
    floor: Floor | None = None
    variants: dict[str, VariantResult] = field(default_factory=dict)
    error: str | None = None  # the whole cell failed (e.g. out of memory for its inputs)
    quant: dict[str, QuantCell] = field(default_factory=dict)  # by scheme, with ``--quant``

    @property
    def floor_us(self) -> float | None:
        return None if self.floor is None else self.floor.seconds * 1e6

    def us(self, name: str) -> float | None:
        v = self.variants.get(name)
        return None if v is None else v.us

    def pct_of_floor(self, name: str) -> float | None:
        return _pct(self.floor_us, self.us(name))

    def speedup_vs_unquantized(self, scheme: str) -> float | None:
        """The unquantized moekit forward's µs over the scheme's (> 1: the quantized one is faster)."""
        q = self.quant.get(scheme)
        ours, theirs = (None if q is None else q.us), self.us(MOEKIT)
        return None if ours is None or theirs is None or ours <= 0 else theirs / ours

    def speedup_vs_grouped_mm(self) -> float | None:
        ours, theirs = self.us(MOEKIT), self.us(GROUPED_MM)
        return None if ours is None or theirs is None or ours <= 0 else theirs / ours

    @property
    def passed(self) -> bool:
        """moekit's outputs (without routing, and with it where timed; each quantized one) were
        produced and are correct."""
        if self.error is not None:
            return False
        moekit = self.variants.get(MOEKIT)
        routing = self.variants.get(MOEKIT_ROUTING, moekit)  # not timed with --quant (no baselines)
        return (moekit is not None and bool(moekit.passed) and bool(routing.passed)
                and all(q.passed for q in self.quant.values()))


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
    # With --quant, per scheme: the backend the quantized layer's oracle chose (a "reference" here is
    # a fallback, not a kernel), and why a scheme's layer could not be built.
    quant_backends: dict[str, str] = field(default_factory=dict)
    quant_errors: dict[str, str] = field(default_factory=dict)
    quant_skipped: dict[str, str] = field(default_factory=dict)  # scheme -> why it cannot hold this shape

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
    quant: tuple[str, ...] = ()  # the canonical schemes benched beside the unquantized forward

    @property
    def passed(self) -> bool:
        return all(s.error is None and not s.quant_errors and all(c.passed for c in s.cells) for s in self.shapes)

    def to_dict(self) -> dict:
        """JSON-ready: derived numbers (floor µs, % of floor, speedup) included; NaN written as null."""
        ceilings = None
        if self.ceilings is not None:
            ceilings = dataclasses.asdict(self.ceilings) | {"bandwidth_bytes_per_s": self.ceilings.bandwidth}
        return _finite({
            "environment": self.environment, "ceilings": ceilings, "dtype": self.dtype,
            "input_sets": self.input_sets, "command": self.command, "timing": self.timing, "passed": self.passed,
            "quant": list(self.quant), "shapes": [_shape_dict(s) for s in self.shapes],
        })


def _shape_dict(shape: ShapeResult) -> dict:
    fields = {f.name: getattr(shape, f.name) for f in dataclasses.fields(shape) if f.name != "cells"}
    return fields | {"cells": [_cell_dict(c) for c in shape.cells]}


def _cell_dict(cell: Cell) -> dict:
    variants = {name: dataclasses.asdict(v) | {"pct_of_floor": cell.pct_of_floor(name)}
                for name, v in cell.variants.items()}
    quant = {scheme: _quant_dict(cell, q) for scheme, q in cell.quant.items()}
    return {"tokens": cell.tokens, "floor": _floor_dict(cell.floor), "variants": variants,
            "speedup_vs_grouped_mm": cell.speedup_vs_grouped_mm(), "quant": quant, "passed": cell.passed,
            "error": cell.error}


def _quant_dict(cell: Cell, q: QuantCell) -> dict:
    return {"scheme": q.scheme, "floor": _floor_dict(q.floor),
            "result": None if q.result is None else dataclasses.asdict(q.result),
            "us": q.us, "pct_of_floor": q.pct_of_floor, "speedup_vs_unquantized": cell.speedup_vs_unquantized(q.scheme),
            "tolerance": q.tolerance, "passed": q.passed, "error": q.error}


def _floor_dict(floor: Floor | None) -> dict | None:
    if floor is None:
        return None
    return dataclasses.asdict(floor) | {"us": floor.seconds * 1e6, "bound": floor.bound}


def _pct(floor_us: float | None, us: float | None) -> float | None:
    return None if us is None or floor_us is None or us <= 0 else 100.0 * floor_us / us


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
