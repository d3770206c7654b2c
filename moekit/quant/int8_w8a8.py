"""``int8-w8a8``: int8 weights with one scale per output row, int8 activations with a dynamic
scale per token, int32 accumulate (compressed-tensors ``int-quantized`` W8A8)."""

from __future__ import annotations

import torch

from moekit.quant import formats
from moekit.quant.method import QuantMethod, blockwise_amax, expand_blocks
from moekit.quant.spec import ACT_PER_TOKEN, ActQuant, QuantizedMatrix, QuantSpec, WeightFormat

SPEC = QuantSpec("int8-w8a8", WeightFormat.INT8, 1, 0, act=ActQuant.INT8, act_group=ACT_PER_TOKEN)


class Int8W8A8Method(QuantMethod):
    def quantize(self, w: torch.Tensor) -> QuantizedMatrix:
        e, n, k = w.shape
        scale = (blockwise_amax(w, self.spec) / formats.INT8_MAX).clamp(min=1e-12)
        codes = (w.float() / expand_blocks(scale, self.spec, n, k)).round().clamp(-formats.INT8_MAX, formats.INT8_MAX)
        return QuantizedMatrix(data=codes.to(torch.int8), scale=scale)


METHODS = {SPEC.scheme: Int8W8A8Method(SPEC)}
