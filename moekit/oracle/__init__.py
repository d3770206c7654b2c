"""Per-scheme oracles (priority list + weight conversion) and the one generic selection function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.oracle import quantized, unquantized
from moekit.quant import METHODS
from moekit.oracle.selection import BackendUnavailableError, Selection, Verdict, select_backend


@dataclass(frozen=True)
class SchemeOracle:
    scheme: str
    priority: tuple[type[ExpertsBackend], ...]
    convert_weights: Callable[..., ExpertWeights]  # (backend, weights, own_codes=False)


ORACLES: dict[str, SchemeOracle] = {
    "none": SchemeOracle("none", unquantized.PRIORITY, unquantized.convert_weights),
    **{scheme: SchemeOracle(scheme, quantized.PRIORITY, quantized.convert_weights) for scheme in METHODS},
}


def oracle_for(scheme: str) -> SchemeOracle:
    try:
        return ORACLES[scheme]
    except KeyError:
        raise NotImplementedError(f"no backend oracle for quant scheme {scheme!r} yet; built: {list(ORACLES)}") from None


__all__ = ["ORACLES", "BackendUnavailableError", "SchemeOracle", "Selection", "Verdict", "oracle_for", "select_backend"]
