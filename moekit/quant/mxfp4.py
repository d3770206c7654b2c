"""``mxfp4`` (OCP microscaling, weight-only): e2m1 codes packed two per byte, one e8m0 scale per 32
input columns; activations in the layer dtype. gpt-oss ships its experts this way (``*_blocks`` /
``*_scales``); compressed-tensors writes it as MXFP4A16.

No hidden/intermediate round-up: moekit's kernels mask the K tail, so any K divisible by 32 runs
unpadded (gpt-oss: 2880 = 90 x 32)."""

from __future__ import annotations

import torch

from moekit.quant import formats
from moekit.quant.method import QuantMethod, blockwise_amax, expand_blocks
from moekit.quant.spec import QuantizedMatrix, QuantSpec, ScaleFormat, WeightFormat

SPEC = QuantSpec("mxfp4", WeightFormat.E2M1, 1, 32, scale_format=ScaleFormat.E8M0)


class Mxfp4Method(QuantMethod):
    def quantize(self, w: torch.Tensor) -> QuantizedMatrix:
        e, n, k = w.shape
        self.check_divisible("weight", n, k)
        scale = formats.mx_scale_for(blockwise_amax(w, self.spec))
        codes = formats.float_to_e2m1(w.float() / expand_blocks(formats.e8m0_to_float(scale), self.spec, n, k))
        return QuantizedMatrix(data=formats.pack_nibbles(codes), scale=scale)


METHODS = {SPEC.scheme: Mxfp4Method(SPEC)}
