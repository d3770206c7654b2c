"""A printable account of one layer's kernel choice: the problem, the chosen backend, and why each
other backend was refused or passed over."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moekit.oracle import Selection
from moekit.problem import MoEProblem


@dataclass(frozen=True)
class Explanation:
    problem: MoEProblem
    selection: Selection
    kernel: str  # "prepare/finalize x experts"
    parallel: Any = None  # ep.selection.ParallelChoice of an expert-parallel layer
    tiles_key: Any = None  # triton_ops.tile_configs.TableKey when the Triton backend runs on a GPU

    @property
    def backend(self) -> str:
        return self.selection.chosen.name

    def summary(self) -> str:
        p = self.problem
        return (
            f"MoE E={p.num_experts} top_k={p.top_k} H={p.hidden_size} I={p.intermediate_size} "
            f"{str(p.dtype).removeprefix('torch.')} on {p.device_type}, activation={p.activation.name}, "
            f"quant={p.quant}, parallel={p.parallel.value}"
        )

    def __str__(self) -> str:
        rows = self.selection.table()
        width = max(len("backend"), *(len(r[0]) for r in rows))
        lines = [self.summary(), f"kernel: {self.kernel}", f"{'backend':<{width}}  status   reason"]
        lines += [f"{name:<{width}}  {status:<7}  {reason}" for name, status, reason in rows]
        if self.tiles_key is not None:
            from moekit.triton_ops.tile_configs import tile_plan

            lines += [f"tiles on {self.tiles_key.device}:", *tile_plan(self.tiles_key)]
        if self.parallel is not None:
            lines += self.parallel.describe()
        return "\n".join(lines)

    __repr__ = __str__
