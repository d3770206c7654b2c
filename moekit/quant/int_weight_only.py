"""Integer weight-only schemes, activations in the layer dtype: ``w4a16-*`` (int4 codes packed two
per byte) and ``w8a16-*`` (int8), one scale per group of 32/64/128 input columns or per output row
(``-ch``), symmetric or with zero points (``-asym``). GPTQ, AWQ and compressed-tensors
``pack-quantized`` checkpoints load into these (act-order ``g_idx`` kept explicit); Kimi-K2 ships
w4a16-g32.

Symmetric int4 stores q + 8 as an unsigned nibble (zero point 8), as compressed-tensors packs it;
symmetric int8 stores signed codes (zero point 0)."""

from __future__ import annotations

import torch

from moekit.quant import formats
from moekit.quant.method import QuantMethod, blockwise_amax, expand_blocks
from moekit.quant.spec import QuantizedMatrix, QuantSpec, WeightFormat

GROUPS = {"g32": 32, "g64": 64, "g128": 128, "ch": 0}


def _spec(bits: int, group: str, asym: bool) -> QuantSpec:
    name = f"w{bits}a16-{group}" + ("-asym" if asym else "")
    return QuantSpec(name, WeightFormat.UINT4 if bits == 4 else WeightFormat.INT8, 1, GROUPS[group], has_zero=asym)


class IntWeightOnlyMethod(QuantMethod):
    def quantize(self, w: torch.Tensor) -> QuantizedMatrix:
        spec = self.spec
        e, n, k = w.shape
        self.check_divisible("weight", n, k)
        bits = spec.weight_bits()
        wf = w.float()
        if spec.has_zero:  # the group's [min, max] onto [0, 2^bits - 1]
            lo_code, hi_code = formats.int_range(bits, signed=bits == 8)
            gn, gk = spec.group_n or n, spec.group_k or k
            blocks = wf.reshape(e, n // gn, gn, k // gk, gk)
            lo = blocks.amin(dim=(2, 4)).clamp(max=0.0)
            hi = blocks.amax(dim=(2, 4)).clamp(min=0.0)
            scale = formats.divide(hi - lo, hi_code - lo_code).clamp(min=1e-12)
            zero = (lo_code - lo / scale).round().clamp(lo_code, hi_code)
            codes = (wf / expand_blocks(scale, spec, n, k) + expand_blocks(zero, spec, n, k)).round()
            codes = codes.clamp(lo_code, hi_code)
            zero = zero.to(torch.uint8 if bits == 4 else torch.int8)
        else:
            qmax = (1 << (bits - 1)) - 1
            scale = formats.divide(blockwise_amax(w, spec), qmax).clamp(min=1e-12)
            codes = (wf / expand_blocks(scale, spec, n, k)).round().clamp(-qmax - 1, qmax)
            zero = None
            if bits == 4:
                codes = codes + formats.UINT4_MIDPOINT
        data = formats.pack_nibbles(codes.to(torch.int16)) if bits == 4 else codes.to(torch.int8)
        return QuantizedMatrix(data=data, scale=scale, zero=zero)


METHODS = {
    spec.scheme: IntWeightOnlyMethod(spec)
    for spec in (_spec(bits, group, asym) for bits in (4, 8) for group in GROUPS for asym in (False, True))
}
