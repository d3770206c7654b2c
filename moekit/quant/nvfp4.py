"""``nvfp4`` (weight-only on Hopper): e2m1 codes packed two per byte, one e4m3 scale per 16 input
columns and one fp32 global scale per expert matrix; the kernels dequantize to the layer dtype.
compressed-tensors writes it as ``nvfp4-pack-quantized`` (NVFP4A16; its ``weight_global_scale``
is the reciprocal of moekit's ``global_scale``).

The global scale puts the largest block scale at the top of e4m3's range (448), so the per-block
e4m3 scales keep their precision."""

from __future__ import annotations

import torch

from moekit.quant import formats
from moekit.quant.method import QuantMethod, blockwise_amax, expand_blocks
from moekit.quant.spec import QuantizedMatrix, QuantSpec, ScaleFormat, WeightFormat

SPEC = QuantSpec("nvfp4", WeightFormat.E2M1, 1, 16, scale_format=ScaleFormat.E4M3)


class Nvfp4Method(QuantMethod):
    def quantize(self, w: torch.Tensor) -> QuantizedMatrix:
        e, n, k = w.shape
        self.check_divisible("weight", n, k)
        block_scale = formats.divide(blockwise_amax(w, self.spec), formats.E2M1_MAX)  # [E, N, K/16] fp32
        global_scale = formats.divide(block_scale.amax(dim=(1, 2)), formats.FP8_MAX).clamp(min=1e-12)  # [E]
        scale = formats.to_fp8(block_scale / global_scale[:, None, None])
        effective = scale.float() * global_scale[:, None, None]
        effective = torch.where(effective > 0, effective, torch.ones_like(effective))  # all-zero blocks
        codes = formats.float_to_e2m1(w.float() / expand_blocks(effective, self.spec, n, k))
        return QuantizedMatrix(data=formats.pack_nibbles(codes), scale=scale, global_scale=global_scale.float())


METHODS = {SPEC.scheme: Nvfp4Method(SPEC)}
