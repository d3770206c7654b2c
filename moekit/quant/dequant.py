"""Reference (plain PyTorch) dequantization of weights and quantization of activations, for every
scheme: the definition the Triton kernels are tested against, and the reference backend's path."""

from __future__ import annotations

import torch

from moekit.quant import formats
from moekit.quant.code_order import to_plain_order
from moekit.quant.method import expand_blocks
from moekit.quant.spec import ACT_PER_TENSOR, ACT_PER_TOKEN, ActQuant, QuantizedMatrix, QuantSpec, ScaleFormat
from moekit.quant.spec import WeightFormat


def code_values(data: torch.Tensor, weight: WeightFormat) -> torch.Tensor:
    """The stored codes as float32 values, unpacked to [..., N, K] (before zero point and scale)."""
    if weight is WeightFormat.FP8:
        return data.float()
    if weight is WeightFormat.INT8:
        return data.float()
    codes = formats.unpack_nibbles(data)
    return formats.e2m1_to_float(codes) if weight is WeightFormat.E2M1 else codes.float()


def scale_values(scale: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if spec.scale_format is ScaleFormat.E8M0:
        return formats.e8m0_to_float(scale)
    return scale.float()


def dequantize(m: QuantizedMatrix, spec: QuantSpec, expert: int | None = None) -> torch.Tensor:
    """The matrix as float32 [E, N, K], or one expert's [N, K] when ``expert`` is given."""
    pick = (lambda t: t) if expert is None else (lambda t: t[expert : expert + 1])
    data = to_plain_order(pick(m.data)) if m.mma_order else pick(m.data)
    values = code_values(data, spec.weight)  # [e, N, K]
    n, k = values.shape[-2:]
    if m.zero is not None:
        values = values - _expand(pick(m.zero).float(), spec, n, k, m.g_idx, pick)
    elif spec.weight is WeightFormat.UINT4:
        values = values - formats.UINT4_MIDPOINT
    w = values * _expand(scale_values(pick(m.scale), spec), spec, n, k, m.g_idx, pick)
    if m.global_scale is not None:
        w = w * pick(m.global_scale).float()[:, None, None]
    return w if expert is None else w[0]


def _expand(per_block: torch.Tensor, spec: QuantSpec, n: int, k: int, g_idx, pick) -> torch.Tensor:
    """[e, N/gn, K/gk] block values -> [e, N, K]: each element takes its block's value."""
    if g_idx is None:
        return expand_blocks(per_block, spec, n, k)
    rows = per_block.repeat_interleave(spec.group_n or n, dim=1)[:, :n]
    idx = pick(g_idx).long()[:, None, :].expand(-1, n, -1)  # act-order: column k is in group g_idx[k]
    return torch.gather(rows, 2, idx)


def quantize_activations(x: torch.Tensor, spec: QuantSpec, static_scale: torch.Tensor | None = None):
    """x [T, K] -> (codes [T, K] fp8/int8, scales fp32 [T, K/group] or [T, 1] or [1, 1]).

    Dynamic scales make each group's absolute maximum the format's largest value; a static scale
    (from the checkpoint) is used as is, with saturation."""
    if spec.act is ActQuant.NONE:
        raise ValueError(f"scheme {spec.scheme!r} does not quantize activations")
    qmax = formats.FP8_MAX if spec.act is ActQuant.FP8 else float(formats.INT8_MAX)
    xf = x.float()
    t, k = xf.shape
    if static_scale is not None:
        scale = static_scale.float().reshape(1, 1)
        groups = xf.reshape(t, 1, k)
    else:
        if spec.act_group == ACT_PER_TENSOR:
            groups = xf.reshape(1, 1, t * k)
        elif spec.act_group == ACT_PER_TOKEN:
            groups = xf.reshape(t, 1, k)
        else:  # per token per group of columns; a partial last group is padded with zeros
            g = spec.act_group
            groups = torch.nn.functional.pad(xf, (0, -k % g)).reshape(t, -(-k // g), g)
        scale = formats.divide(groups.abs().amax(dim=-1), qmax).clamp(min=1e-12)  # [t or 1, groups]
        groups = groups.reshape(scale.shape[0], scale.shape[1], -1)
    q = groups / scale[..., None]
    if spec.act is ActQuant.FP8:
        codes = formats.to_fp8(q)
    else:
        codes = q.round().clamp(-formats.INT8_MAX, formats.INT8_MAX).to(torch.int8)
    return codes.reshape(t, -1)[:, :k], scale


def fake_quantize_activations(x: torch.Tensor, spec: QuantSpec, static_scale: torch.Tensor | None = None):
    """x quantized and dequantized again (float32): what a w8a8 kernel's matmul actually sees."""
    codes, scale = quantize_activations(x, spec, static_scale)
    t, k = x.shape
    if spec.act_group > 0 and static_scale is None:
        return codes.float() * scale.repeat_interleave(spec.act_group, dim=1)[:, :k]
    return (codes.float().reshape(scale.shape[0], scale.shape[1], -1) * scale[..., None]).reshape(t, k)
