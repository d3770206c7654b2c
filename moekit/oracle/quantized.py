"""Oracle of the quantized schemes: per scheme, the backends in priority order (each refuses a scheme
it does not list in ``quant_schemes``, so ``explain`` says why), and the conversion of moekit's
quantized layout (quant/spec.py) into each backend's format.

Both backends read moekit's layout as it is: the Triton kernels dequantize packed codes per tile
and the reference dequantizes one expert at a time. mxfp4 needs no hidden/intermediate round-up
(the kernels mask the K tail), so no scheme pads here."""

from __future__ import annotations

from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.experts.reference import ReferenceExperts
from moekit.experts.triton_fused import TritonExperts

PRIORITY: tuple[type[ExpertsBackend], ...] = (TritonExperts, ReferenceExperts)


def convert_weights(backend: type[ExpertsBackend], weights: ExpertWeights) -> ExpertWeights:
    if backend in PRIORITY:
        return weights
    raise ValueError(f"no weight conversion from moekit's quantized layout to backend {backend.name!r}")
