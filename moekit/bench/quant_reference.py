"""What a quantized forward is checked against: the same MoE in float32 (TF32 off) on the layer's
DEQUANTIZED weights, by the reference backend (one expert dequantized at a time: a float32 copy of
every expert would not fit beside DeepSeek-V3's), which for w8a8 schemes also quantizes the
activations the way the scheme defines. The error left is then the kernel's own, not the scheme's."""

from __future__ import annotations

import torch

from moekit.bench.baselines import ieee_fp32_matmul
from moekit.experts.base import ExpertWeights
from moekit.experts.reference import ReferenceExperts
from moekit.kernel.modular import ModularKernel
from moekit.kernel.prepare_finalize import SINGLE_DEVICE
from moekit.quant.spec import ActQuant, QuantSpec

# Weight-only kernels multiply the dequantized weights in the layer dtype, as the unquantized path
# does: the bf16 bound holds.
WEIGHT_ONLY_REL_TOL = 1e-2
# w8a8: the reference quantizes the activations as the kernels do (gemm2's input from float32: the
# Triton kernels keep gemm1's w8a8 output in float32, or quantize it from the accumulator in gemm1's
# epilogue), so only the dots' rounding and a rare code flip remain: the same bound. A kernel that
# rounded that input to bf16 before quantizing it would flip ~1.5% of the fp8 codes by one step and
# land at ~1.6e-2 (fp8) / ~1.0e-2 (int8) on Gaussian inputs: this bound catches it.
W8A8_REL_TOL = {ActQuant.FP8: 1e-2, ActQuant.INT8: 1e-2}


def quant_tolerance(spec: QuantSpec) -> float:
    return WEIGHT_ONLY_REL_TOL if spec.weight_only else W8A8_REL_TOL[spec.act]


def quantized_reference(layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """[T, H] float32: the routed experts of quantized ``layer`` on precomputed routing."""
    weights = ExpertWeights(layer._quantized("w13"), layer._quantized("w2"), layer.w13_bias, layer.w2_bias,
                            quant=layer.quant_method.spec, a13_scale=layer.a13_scale, a2_scale=layer.a2_scale)
    kernel = ModularKernel(SINGLE_DEVICE, ReferenceExperts(), weights, layer.activation, layer.gate_up_layout,
                           layer.apply_router_weight_on_input)
    with ieee_fp32_matmul():
        return kernel.apply(x.float(), topk_weights, topk_ids)  # float32 in: float32 out
