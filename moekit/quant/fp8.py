"""fp8 e4m3 weights and activations (w8a8 on fp8 tensor cores), three scale granularities:

- ``fp8-per-tensor``: one weight scale per expert matrix; activations one dynamic scale per tensor;
  ``fp8-per-tensor-static`` takes the checkpoint's static ``input_scale`` instead (a13_scale,
  a2_scale); compressed-tensors ``float-quantized`` FP8.
- ``fp8-per-channel``: one weight scale per output row; activations per token (FP8_DYNAMIC).
- ``fp8-block128``: 128x128 weight blocks; activations per token per 128 columns (DeepSeek-V3,
  Qwen3-FP8, compressed-tensors FP8_BLOCK).
"""

from __future__ import annotations

import torch

from moekit.quant import formats
from moekit.quant.method import QuantMethod, blockwise_amax, expand_blocks
from moekit.quant.spec import ACT_PER_TENSOR, ACT_PER_TOKEN, ActQuant, QuantizedMatrix, QuantSpec, WeightFormat

SPECS = {
    "fp8-per-tensor": QuantSpec("fp8-per-tensor", WeightFormat.FP8, 0, 0, act=ActQuant.FP8, act_group=ACT_PER_TENSOR),
    "fp8-per-tensor-static": QuantSpec("fp8-per-tensor-static", WeightFormat.FP8, 0, 0, act=ActQuant.FP8,
                                       act_group=ACT_PER_TENSOR, act_static=True),
    "fp8-per-channel": QuantSpec("fp8-per-channel", WeightFormat.FP8, 1, 0, act=ActQuant.FP8, act_group=ACT_PER_TOKEN),
    "fp8-block128": QuantSpec("fp8-block128", WeightFormat.FP8, 128, 128, act=ActQuant.FP8, act_group=128),
}


class Fp8Method(QuantMethod):
    def quantize(self, w: torch.Tensor) -> QuantizedMatrix:
        e, n, k = w.shape
        self.check_divisible("weight", n, k)
        scale = formats.divide(blockwise_amax(w, self.spec), formats.FP8_MAX).clamp(min=1e-12)
        data = formats.to_fp8(w.float() / expand_blocks(scale, self.spec, n, k))
        return QuantizedMatrix(data=data, scale=scale)


METHODS = {name: Fp8Method(spec) for name, spec in SPECS.items()}
