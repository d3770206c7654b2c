"""Fused experts in Triton: token pairs aligned by expert on the device, gemm1 with gate and up in
one program and the activation in its epilogue, gemm2 with the routing weight in its epilogue, and
a fp32 sum over top-k. No host sync and no data-dependent allocation, so it replays in a CUDA
graph. Tiles come from the tuned tables or the default heuristic (triton_ops/tile_configs.py)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from moekit.activations import ActivationKind, GateUpLayout
from moekit.experts.base import ExpertsBackend, ExpertWeights
from moekit.problem import ParallelLayout


class TritonExperts(ExpertsBackend):
    name: ClassVar[str] = "triton"
    description: ClassVar[str] = "Triton fused MoE: device-side expert alignment, fused gate/up + activation, weighted gemm2"
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.bfloat16, torch.float16, torch.float32})
    quant_schemes = frozenset({"none"})
    activations = frozenset(ActivationKind)
    gate_up_layouts = frozenset(GateUpLayout)
    parallel_layouts = frozenset({ParallelLayout.SINGLE})
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
        return super().supports(problem, env)

    @classmethod
    def explicit_only(cls, problem, env):
        if problem.device_type == "cpu":
            return "on the CPU it runs in Triton's interpreter, far slower than the reference"
        return None

    def apply(self, x, topk_weights, topk_ids, weights: ExpertWeights, activation, gate_up_layout, tiles=None):
        from moekit.triton_ops.experts_kernels import fused_experts
        from moekit.triton_ops.tile_configs import tiles_for_call

        if tiles is None:
            tiles = tiles_for_call(x.device, weights.w2.shape, topk_ids.shape, x.dtype, activation.gated)
        return fused_experts(x, weights.w13, weights.w2, topk_weights, topk_ids, activation, gate_up_layout,
                             tiles, weights.w13_bias, weights.w2_bias)

