"""Oracle of the unquantized scheme (fp32/bf16/fp16 weights): the backends in priority order, and
the conversion of moekit-layout weights into each backend's format."""

from __future__ import annotations

from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.experts.reference import ReferenceExperts

# Fastest first; the reference runs anywhere, so it closes every list.
PRIORITY: tuple[type[ExpertsBackend], ...] = (ReferenceExperts,)


def convert_weights(backend: type[ExpertsBackend], weights: ExpertWeights) -> ExpertWeights:
    if backend is ReferenceExperts:
        return weights  # the reference reads moekit's layout as it is, views included
    raise ValueError(f"no weight conversion from the unquantized layout to backend {backend.name!r}")
