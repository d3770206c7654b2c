"""Oracle of the unquantized scheme (fp32/bf16/fp16 weights): the backends in priority order, and
the conversion of moekit-layout weights into each backend's format."""

from __future__ import annotations

from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.experts.reference import ReferenceExperts
from moekit.experts.torch_grouped_mm import TorchGroupedMMExperts
from moekit.experts.triton_fused import TritonExperts

# Fastest first; the reference runs anywhere, so it closes every list.
PRIORITY: tuple[type[ExpertsBackend], ...] = (TritonExperts, TorchGroupedMMExperts, ReferenceExperts)


def convert_weights(backend: type[ExpertsBackend], weights: ExpertWeights, own_codes: bool = False) -> ExpertWeights:
    if backend in PRIORITY:
        return weights  # all read moekit's layout as it is (strided loads; grouped_mm takes transposed views)
    raise ValueError(f"no weight conversion from the unquantized layout to backend {backend.name!r}")
