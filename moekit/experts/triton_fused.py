"""Fused experts in Triton: token pairs aligned by expert on the device, gemm1 with gate and up in
one program and the activation in its epilogue, gemm2 with the routing weight in its epilogue, and
a fp32 sum over top-k. No host sync and no data-dependent allocation, so it replays in a CUDA
graph. Tiles come from the tuned tables or the default heuristic (triton_ops/tile_configs.py).

Quantized weights (every scheme in moekit.quant) are read in moekit's quantized layout and
dequantized per tile inside the GEMMs (triton_ops/quant_gemm.py); w8a8 schemes quantize the
activations on the device and run the dot on fp8 / int8 tensor cores."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from moekit.activations import ActivationKind, GateUpLayout
from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.problem import ParallelLayout
from moekit.quant import KNOWN_SCHEMES
from moekit.quant.registry import METHODS
from moekit.quant.spec import ActQuant, WeightFormat

# fp8 tensor-core dots (fp8e4nv x fp8e4nv) exist from Ada / Hopper on; Ampere has int8 dots only.
FP8_DOT_CAPABILITY = (8, 9)


class TritonExperts(ExpertsBackend):
    name: ClassVar[str] = "triton"
    description: ClassVar[str] = "Triton fused MoE: device-side expert alignment, fused gate/up + activation, weighted gemm2"
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.bfloat16, torch.float16, torch.float32})
    quant_schemes = frozenset(KNOWN_SCHEMES)
    # Schemes that need more than the backend's baseline (sm80), as data: scheme -> (capability, why).
    quant_min_capability: ClassVar[dict[str, tuple[tuple[int, int], str]]] = {
        name: (FP8_DOT_CAPABILITY, "fp8 tensor-core dots")
        for name, method in METHODS.items()
        if method.spec.act is ActQuant.FP8 or method.spec.weight is WeightFormat.FP8
    }
    activations = frozenset(ActivationKind)
    gate_up_layouts = frozenset(GateUpLayout)
    parallel_layouts = frozenset({ParallelLayout.SINGLE, ParallelLayout.EXPERT})
    supports_bias = True
    supports_router_weight_on_input = True
    capturable = True

    @classmethod
    def available(cls, env):
        if not env.triton_available:
            return False, "triton is not installed"
        if env.compute_capability is not None and env.compute_capability < (8, 0):
            return False, f"needs compute capability >= 8.0, device has {env.compute_capability}"
        return True, ""

    @classmethod
    def supports(cls, problem, env):
        if problem.device_type == "cpu" and env.triton_interpreter:
            # Under TRITON_INTERPRET=1 the kernels run on the CPU: how CI tests them.
            problem = dataclasses.replace(problem, device_type="cuda")
        ok, reason = super().supports(problem, env)
        need = cls.quant_min_capability.get(problem.quant)
        if ok and need is not None and env.compute_capability is not None and env.compute_capability < need[0]:
            (major, minor), what = need
            return False, (f"quant scheme {problem.quant!r} needs {what}: compute capability >= {major}.{minor}, "
                           f"device has {env.compute_capability[0]}.{env.compute_capability[1]}")
        return ok, reason

    @classmethod
    def explicit_only(cls, problem, env):
        if problem.device_type == "cpu":
            return "on the CPU it runs in Triton's interpreter, far slower than the reference"
        return None

    def apply(self, x, topk_weights, topk_ids, weights: ExpertWeights, activation, gate_up_layout, tiles=None):
        from moekit.triton_ops.experts_kernels import fused_experts
        from moekit.triton_ops.tile_configs import tiles_for_call

        spec = weights.quant
        if tiles is None:
            tiles = tiles_for_call(x.device, _logical_w2_shape(weights), topk_ids.shape, x.dtype, activation.gated,
                                   spec.scheme if spec is not None else "none", _gemv_runs(weights))
        return fused_experts(x, weights.w13, weights.w2, topk_weights, topk_ids, activation, gate_up_layout,
                             tiles, weights.w13_bias, weights.w2_bias, quant=spec,
                             a13_scale=weights.a13_scale, a2_scale=weights.a2_scale)


def _gemv_runs(weights: ExpertWeights) -> bool:
    """Whether the decode GEMV can run these weights: act-order (g_idx) weights take the tensor-core
    tiles at decode too. (Scheme and shape are checked where its tiles are chosen.)"""
    return weights.quant is None or (weights.w13.g_idx is None and weights.w2.g_idx is None)


def _logical_w2_shape(weights: ExpertWeights) -> tuple[int, int, int]:
    """w2's [E, H, I] (packed 4-bit codes hold two columns per byte)."""
    if weights.quant is None:
        return tuple(weights.w2.shape)
    e, h, k = weights.w2.data.shape
    return e, h, k * 2 if weights.quant.weight.packed else k

