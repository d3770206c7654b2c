"""Fine-grained fp8 checkpoints (``quant_method: fp8``: DeepSeek-V3/R1, Qwen3-FP8): one projection's
``weight`` (float8_e4m3fn [N, K]) and ``weight_scale_inv`` (fp32 [ceil(N/128), ceil(K/128)]).

Despite its name ``weight_scale_inv`` multiplies the fp8 codes (transformers' and DeepSeek's
dequantization: ``weight * weight_scale_inv`` per 128x128 block), which is moekit's fp8-block128
``scale`` as it is; edge blocks may be partial."""

from __future__ import annotations

import torch

from moekit.checkpoints.projection import PendingProjection, Projection, expect
from moekit.quant.factory import LayerQuant
from moekit.quant.method import QuantMethod
from moekit.quant.spec import QuantizedMatrix


# fp32 (DeepSeek-V3, Qwen3-FP8); ue8m0 powers of two (scale_fmt "ue8m0"), which fp32 holds exactly.
SCALE_DTYPES = (torch.float32,) + ((torch.float8_e8m0fnu,) if hasattr(torch, "float8_e8m0fnu") else ())


def read_projection(reader, key: str, quant: LayerQuant, method: QuantMethod, n: int, k: int) -> PendingProjection:
    spec = method.spec
    p = reader.prefix + key
    weight = reader.take(f"{key}.weight")
    expect(f"{p}.weight", weight, (n, k), (spec.data_dtype(),))
    scale = reader.take(f"{key}.weight_scale_inv")
    expect(f"{p}.weight_scale_inv", scale, spec.scale_shape(1, n, k)[1:], SCALE_DTYPES, what="128x128 block scales")

    def convert() -> Projection:
        return Projection(QuantizedMatrix(data=weight[None], scale=scale.float()[None]))

    return convert
