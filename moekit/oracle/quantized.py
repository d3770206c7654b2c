"""Oracle of the quantized schemes: per scheme, the backends in priority order (each refuses a scheme
it does not list in ``quant_schemes``, so ``explain`` says why), and the conversion of moekit's
quantized layout (quant/spec.py) into each backend's format.

The reference reads moekit's plain layout, and so does the Triton backend; but for the owner of
the tensors (``own_codes``: the layer) packed 4-bit codes whose runs fit (quant/code_order.py:
w4a16, mxfp4) are kept in the Triton backend's MMA order: the conversion reorders them *in place*
(no second copy of the weights) and marks the matrices; converting for the reference puts them
back. Tensors the caller does not own (``moekit.fused_moe``'s arguments, a Hugging Face module's
weights served through ``experts_implementation="moekit"``) stay as they are, in plain order.
mxfp4 needs no hidden/intermediate round-up (the kernels mask the K tail), so no scheme pads here."""

from __future__ import annotations

import dataclasses

import torch

from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.experts.reference import ReferenceExperts
from moekit.experts.triton_fused import TritonExperts
from moekit.quant.code_order import mma_order_fits, to_mma_order, to_plain_order
from moekit.quant.spec import QuantizedMatrix, ScaleFormat

PRIORITY: tuple[type[ExpertsBackend], ...] = (TritonExperts, ReferenceExperts)


def convert_weights(backend: type[ExpertsBackend], weights: ExpertWeights, own_codes: bool = False) -> ExpertWeights:
    if backend not in PRIORITY:
        raise ValueError(f"no weight conversion from moekit's quantized layout to backend {backend.name!r}")
    if not own_codes:  # (either order is read by both backends)
        return weights
    # both matrices or neither: the decode GEMV writes gemm2's input in w13's order
    mma = backend is TritonExperts and mma_order_fits(weights.quant, weights.w13) and \
        mma_order_fits(weights.quant, weights.w2)
    w13, w2 = _in_order(weights.w13, mma), _in_order(weights.w2, mma)
    if backend is TritonExperts and weights.quant.scale_format is ScaleFormat.E8M0:
        w13, w2 = _marked_small_scales(w13), _marked_small_scales(w2)
    return dataclasses.replace(weights, w13=w13, w2=w2)


@torch.no_grad()
def _marked_small_scales(m: QuantizedMatrix) -> QuantizedMatrix:
    """``m`` marked ``scales_at_most_two`` when every e8m0 byte is at most 128 (one host sync, at
    conversion; the kernels then fold e2m1's 2**126 into the scale: paired_dequant.py)."""
    small = bool((m.scale <= 128).all())
    return dataclasses.replace(m, scales_at_most_two=small)


@torch.no_grad()
def _in_order(m: QuantizedMatrix, want: bool) -> QuantizedMatrix:
    """``m`` with its codes in MMA order (``want``) or plain, reordered in place."""
    if want == m.mma_order or m.data.is_meta:
        return m
    m.data.copy_(to_mma_order(m.data) if want else to_plain_order(m.data))
    return dataclasses.replace(m, mma_order=want)
