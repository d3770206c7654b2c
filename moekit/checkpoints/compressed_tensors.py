"""compressed-tensors checkpoints: one linear projection's tensors -> moekit's quantized layout.

Tensor names under a projection (``experts.3.gate_proj.``), by the layer's format:

===========================  =============================================================================
float-/int-/naive-quantized  ``weight`` e4m3 or int8 [N, K], ``weight_scale`` float ([1] per tensor,
                             [N, 1] per channel, [ceil(N/128), ceil(K/128)] blocks, [N, K/g] groups),
                             ``input_scale`` [1] for static activations
pack-quantized               ``weight_packed`` int32 [N, ceil(K*bits/32)], ``weight_shape`` [2] = (N, K),
                             ``weight_scale`` [N, K/g] or [N, 1], asymmetric: ``weight_zero_point``
                             int32 packed along N; ``weight_g_idx`` [K] for GPTQ act-order
                             (required when the config says ``actorder: group``)
mxfp4-pack-quantized         ``weight_packed`` uint8 [N, K/2], ``weight_scale`` uint8 e8m0 [N, K/32]
nvfp4-pack-quantized         ``weight_packed`` uint8 [N, K/2], ``weight_scale`` e4m3 [N, K/16],
                             ``weight_global_scale`` fp32 [1]
===========================  =============================================================================

Unpacking uses the package's own ``unpack_from_int32``; codes are then repacked with
``moekit.quant.formats.pack_nibbles``. compressed-tensors stores signed codes (int4 in -8..7) and
zero points in the same signed domain; moekit's uint4 adds 8 to both. Its fp4 bytes already hold
the even column in the low nibble, as moekit's. Its nvfp4 dequantization divides by
``weight_global_scale``; moekit multiplies by ``global_scale``, so one is the other's reciprocal.
"""

from __future__ import annotations

import torch

from moekit.checkpoints.projection import FLOAT_SCALE_DTYPES, PendingProjection, Projection, expect
from moekit.quant import formats
from moekit.quant.factory import LayerQuant
from moekit.quant.method import QuantMethod
from moekit.quant.spec import QuantizedMatrix, WeightFormat

_INT_INDEX = (torch.int32, torch.int64)


def read_projection(reader, key: str, quant: LayerQuant, method: QuantMethod, n: int, k: int) -> PendingProjection:
    """Validate the tensors of projection ``key`` ([N, K]) and return their conversion."""
    full = reader.prefix + key
    method.check_divisible(repr(full), n, k)
    fmt = quant.format
    if fmt == "pack-quantized":
        return _read_packed(reader, key, quant, method, n, k)
    if fmt in ("mxfp4-pack-quantized", "nvfp4-pack-quantized"):
        return _read_fp4(reader, key, method, n, k)
    return _read_unpacked(reader, key, quant, method, n, k)


def _scale_grid(method: QuantMethod, n: int, k: int) -> tuple[int, int]:
    return method.spec.scale_shape(1, n, k)[1:]


def _take_float_scale(reader, key: str, method: QuantMethod, n: int, k: int) -> torch.Tensor:
    grid = _scale_grid(method, n, k)
    t = reader.take(f"{key}.weight_scale")
    shape = tuple(t.shape) if method.spec.group_n == 0 and tuple(t.shape) in ((), (1,)) else grid
    expect(reader.prefix + f"{key}.weight_scale", t, shape, FLOAT_SCALE_DTYPES)
    return t


def _read_unpacked(reader, key, quant: LayerQuant, method: QuantMethod, n: int, k: int) -> PendingProjection:
    spec = method.spec
    weight = reader.take(f"{key}.weight")
    # naive-quantized int4 keeps one signed code per int8; everything else stores the scheme's own codes
    dtype = torch.int8 if spec.weight is WeightFormat.UINT4 else spec.data_dtype()
    expect(reader.prefix + f"{key}.weight", weight, (n, k), (dtype,))
    scale = _take_float_scale(reader, key, method, n, k)
    zero = _take_zero_unpacked(reader, key, method, n, k)
    input_scale = None
    if spec.act_static:
        input_scale = reader.take(f"{key}.input_scale")
        expect(reader.prefix + f"{key}.input_scale", input_scale, None, FLOAT_SCALE_DTYPES)
        if input_scale.numel() != 1:
            raise ValueError(f"{reader.prefix + key + '.input_scale'!r} must hold one value, "
                             f"got {tuple(input_scale.shape)}")

    def convert() -> Projection:
        data = weight
        z = zero
        if spec.weight is WeightFormat.UINT4:
            data = formats.pack_nibbles(weight.to(torch.int16) + formats.UINT4_MIDPOINT)
            z = None if zero is None else (zero.to(torch.int16) + formats.UINT4_MIDPOINT).to(torch.uint8)
        elif zero is not None:
            z = zero.to(torch.int8)  # int8 codes' zero points (stored as int32 by some writers)
        grid = _scale_grid(method, n, k)
        m = QuantizedMatrix(data=data[None], scale=scale.float().reshape(grid)[None],
                            zero=None if z is None else z.reshape(grid)[None])
        return Projection(m, None if input_scale is None else input_scale.float().reshape(()))

    return convert


def _take_zero_unpacked(reader, key, method: QuantMethod, n: int, k: int):
    if not method.spec.has_zero:
        return None
    t = reader.take(f"{key}.weight_zero_point")
    expect(reader.prefix + f"{key}.weight_zero_point", t, _scale_grid(method, n, k), (torch.int8, torch.int32))
    return t


def _read_packed(reader, key, quant: LayerQuant, method: QuantMethod, n: int, k: int) -> PendingProjection:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    spec, bits = method.spec, method.spec.weight_bits()
    p = reader.prefix + key
    packed = reader.take(f"{key}.weight_packed")
    expect(f"{p}.weight_packed", packed, (n, -(-k * bits // 32)), (torch.int32,))
    shape = reader.take(f"{key}.weight_shape")
    expect(f"{p}.weight_shape", shape, (2,), _INT_INDEX)
    if tuple(shape.tolist()) != (n, k):
        raise ValueError(f"{p + '.weight_shape'!r} must be [{n}, {k}] (the layer's shape), got {shape.tolist()}")
    scale = _take_float_scale(reader, key, method, n, k)
    groups = _scale_grid(method, n, k)[1]
    packed_zero = None
    if spec.has_zero:
        packed_zero = reader.take(f"{key}.weight_zero_point")
        expect(f"{p}.weight_zero_point", packed_zero, (-(-n * bits // 32), groups), (torch.int32,))
    g_idx = None
    if quant.act_order or reader.has(f"{key}.weight_g_idx"):  # act-order configs must ship one
        g_idx = reader.take(f"{key}.weight_g_idx")
        expect(f"{p}.weight_g_idx", g_idx, (k,), _INT_INDEX)
        if g_idx.numel() and (g_idx.min() < 0 or g_idx.max() >= groups):
            raise ValueError(f"{p + '.weight_g_idx'!r} must hold scale groups in [0, {groups}), "
                             f"got [{int(g_idx.min())}, {int(g_idx.max())}]")

    def convert() -> Projection:
        codes = unpack_from_int32(packed, bits, torch.Size((n, k)))  # signed int8, as quantized
        zero = None
        if packed_zero is not None:
            zero = unpack_from_int32(packed_zero, bits, torch.Size((n, groups)), packed_dim=0)
        if bits == 4:
            data = formats.pack_nibbles(codes.to(torch.int16) + formats.UINT4_MIDPOINT)
            zero = None if zero is None else (zero.to(torch.int16) + formats.UINT4_MIDPOINT).to(torch.uint8)
        else:
            data = codes
        m = QuantizedMatrix(data=data[None], scale=scale.float().reshape(n, groups)[None],
                            zero=None if zero is None else zero[None],
                            g_idx=None if g_idx is None else g_idx.to(torch.int32)[None])
        return Projection(m)

    return convert


def _read_fp4(reader, key, method: QuantMethod, n: int, k: int) -> PendingProjection:
    spec = method.spec
    p = reader.prefix + key
    packed = reader.take(f"{key}.weight_packed")
    expect(f"{p}.weight_packed", packed, (n, k // 2), (torch.uint8,))
    scale = reader.take(f"{key}.weight_scale")
    expect(f"{p}.weight_scale", scale, _scale_grid(method, n, k), (spec.scale_dtype(),),
           what=f"{spec.scale_format.value} scales")
    global_scale = None
    if spec.scheme == "nvfp4":
        global_scale = reader.take(f"{key}.weight_global_scale")
        expect(f"{p}.weight_global_scale", global_scale, (1,), (torch.float32,))

    def convert() -> Projection:
        moekit_global = None if global_scale is None else (1.0 / global_scale.float()).reshape(1)
        return Projection(QuantizedMatrix(data=packed[None], scale=scale[None], global_scale=moekit_global))

    return convert
