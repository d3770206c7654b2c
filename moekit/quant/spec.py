"""What a quantized expert matrix is, as data: the kernel's quant config (``QuantSpec``) and one
matrix's tensors in moekit's quantized layout (``QuantizedMatrix``).

moekit's quantized layout, for an expert matrix of logical shape [E, N, K] (N output rows, K input
columns; w13 is [E, 2I, H], w2 is [E, H, I]):

- ``data``: fp8 e4m3 or int8 [E, N, K]; or 4-bit codes packed two per uint8 along K, [E, N, K/2]
  (formats.pack_nibbles: even column in the low nibble).
- ``scale``: [E, ceil(N/gn), ceil(K/gk)], one scale per block of gn rows x gk columns, where
  gn = N for ``group_n == 0`` (whole matrix) and gk = K for ``group_k == 0``. Per tensor is
  (0, 0), per output channel (1, 0), group-wise (1, g), DeepSeek blocks (128, 128). Stored as fp32,
  or as the format's own scale type (e8m0 as uint8 for mxfp4, e4m3 for nvfp4).
- ``zero``: optional, like ``scale``, in the code domain (uint4 codes 0..15, int8 codes);
  absent means the format's midpoint (8 for uint4, 0 for int8).
- ``g_idx``: optional [E, K] int32, the scale group of each input column (GPTQ act-order); absent
  means column k is in group k // gk.
- ``global_scale``: optional [E] fp32 multiplier of every scale (nvfp4).
- ``mma_order``: 4-bit codes stored in the Triton backend's order within 16-byte runs of a row
  (quant/code_order.py); False (plain order) everywhere else.
- ``scales_at_most_two``: every e8m0 scale byte is at most 128 (scale <= 2), checked once when the
  Triton backend takes the weights: its e2m1 PTX may then fold the 2**126 that e2m1 bits leave out
  into the scale (triton_ops/paired_dequant.py). False (unknown) everywhere else.

Dequantized value: (code_value - zero) * scale[block] * global_scale.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch


class WeightFormat(enum.Enum):
    FP8 = "fp8_e4m3"  # float8_e4m3fn [E, N, K]
    INT8 = "int8"  # signed int8 [E, N, K]
    UINT4 = "uint4"  # packed uint8 [E, N, K/2], codes 0..15 (symmetric int4: q + 8)
    E2M1 = "e2m1"  # packed uint8 [E, N, K/2], fp4 codes

    @property
    def packed(self) -> bool:
        return self in (WeightFormat.UINT4, WeightFormat.E2M1)


class ScaleFormat(enum.Enum):
    FP32 = "fp32"
    E8M0 = "e8m0"  # uint8 exponents (mxfp4)
    E4M3 = "e4m3"  # float8_e4m3fn (nvfp4)


class ActQuant(enum.Enum):
    NONE = "none"  # weight-only: activations stay in the layer dtype
    FP8 = "fp8_e4m3"
    INT8 = "int8"


# Activation scale granularity (ActQuant other than NONE): one scale per tensor, per token, or per
# token per group of ``act_group`` columns.
ACT_PER_TENSOR = -1
ACT_PER_TOKEN = 0


@dataclass(frozen=True)
class QuantSpec:
    scheme: str  # canonical scheme name, e.g. "fp8-block128"
    weight: WeightFormat
    group_n: int  # rows per weight scale block (0: all rows)
    group_k: int  # input columns per weight scale block (0: all columns)
    scale_format: ScaleFormat = ScaleFormat.FP32
    has_zero: bool = False
    act: ActQuant = ActQuant.NONE
    act_group: int = ACT_PER_TOKEN  # ACT_PER_TENSOR, ACT_PER_TOKEN or a column group size (128)
    act_static: bool = False  # per-tensor activation scales from the checkpoint (a13_scale, a2_scale)

    @property
    def weight_only(self) -> bool:
        return self.act is ActQuant.NONE

    def scale_shape(self, num_experts: int, n: int, k: int) -> tuple[int, int, int]:
        gn, gk = self.group_n or n, self.group_k or k
        return (num_experts, -(-n // gn), -(-k // gk))

    def data_shape(self, num_experts: int, n: int, k: int) -> tuple[int, int, int]:
        return (num_experts, n, k // 2 if self.weight.packed else k)

    def data_dtype(self) -> torch.dtype:
        return {WeightFormat.FP8: torch.float8_e4m3fn, WeightFormat.INT8: torch.int8}.get(self.weight, torch.uint8)

    def scale_dtype(self) -> torch.dtype:
        return {ScaleFormat.FP32: torch.float32, ScaleFormat.E8M0: torch.uint8,
                ScaleFormat.E4M3: torch.float8_e4m3fn}[self.scale_format]

    def weight_bits(self) -> int:
        return 4 if self.weight.packed else 8


@dataclass(frozen=True)
class QuantizedMatrix:
    """One expert matrix [E, N, K] in moekit's quantized layout (see the module docstring)."""

    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None
    g_idx: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None
    mma_order: bool = False
    scales_at_most_two: bool = False

    TENSORS: ClassVar[tuple[str, ...]] = ("data", "scale", "zero", "g_idx", "global_scale")  # in field order

    def map(self, fn) -> QuantizedMatrix:
        """The same matrix with ``fn`` applied to every tensor present (e.g. ``.to(device)``)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def nbytes(self) -> int:
        tensors = (getattr(self, name) for name in self.TENSORS)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)
