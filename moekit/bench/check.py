"""Correctness of one timed output against the float32 reference: every element written and finite,
and the relative Frobenius error within the tolerance of the output's dtype (1e-2 for bf16/fp16)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moekit.tolerance import REL_TOL, relative_error


@dataclass(frozen=True)
class Check:
    rel_error: float  # NaN when the output has NaN
    finite: bool  # no NaN/inf left: graph outputs are poisoned with NaN before the checked replay
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.finite and not math.isnan(self.rel_error) and self.rel_error <= self.tolerance


def check_output(out: torch.Tensor, ref32: torch.Tensor, tolerance: float | None = None) -> Check:
    """``tolerance`` defaults to the output dtype's bound."""
    if out.shape != ref32.shape:
        raise ValueError(f"output has shape {tuple(out.shape)}, the reference {tuple(ref32.shape)}")
    finite = bool(torch.isfinite(out).all())
    bound = REL_TOL[out.dtype] if tolerance is None else tolerance
    return Check(rel_error=relative_error(out, ref32), finite=finite, tolerance=bound)
