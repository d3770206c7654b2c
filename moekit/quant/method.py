"""A quant scheme's method: its kernel config (``QuantSpec``), how to quantize float weights on the
fly, and the checks a quantized matrix must pass before anything converts it. Stateless: one
instance serves every layer of the scheme (the tensors live on the layer)."""

from __future__ import annotations

import torch

from moekit.quant.spec import QuantizedMatrix, QuantSpec


class QuantMethod:
    def __init__(self, spec: QuantSpec):
        self.spec = spec

    @property
    def scheme(self) -> str:
        return self.spec.scheme

    def quantize(self, w: torch.Tensor) -> QuantizedMatrix:
        """Float weights [E, N, K] -> this scheme's quantized matrix (round to nearest)."""
        raise NotImplementedError

    def check_divisible(self, name: str, n: int, k: int) -> None:
        """Group sizes must divide K (packed formats also need an even K). 2-D blocks (DeepSeek's
        128x128) may be partial at the edges: their scale grid is ceil(N/gn) x ceil(K/gk)."""
        spec = self.spec
        blocked = spec.group_n > 1
        if spec.group_k and k % spec.group_k and not blocked:
            raise ValueError(f"{name}: group size {spec.group_k} of scheme {spec.scheme!r} does not divide "
                             f"its input dimension {k}")
        if spec.weight.packed and k % 2:
            raise ValueError(f"{name}: 4-bit packing needs an even input dimension, got {k}")

    def check(self, name: str, m: QuantizedMatrix, num_experts: int, n: int, k: int) -> None:
        """Raise a ValueError/TypeError naming the tensor if ``m`` is not a valid [E, N, K] matrix."""
        spec = self.spec
        self.check_divisible(name, n, k)
        _expect(f"{name}.data", m.data, spec.data_shape(num_experts, n, k), spec.data_dtype())
        _expect(f"{name}.scale", m.scale, spec.scale_shape(num_experts, n, k), spec.scale_dtype())
        if m.zero is not None:
            if not spec.has_zero:
                raise ValueError(f"{name}.zero: scheme {spec.scheme!r} is symmetric and takes no zero point")
            _expect(f"{name}.zero", m.zero, spec.scale_shape(num_experts, n, k), None)
        elif spec.has_zero:
            raise ValueError(f"{name}.zero: scheme {spec.scheme!r} needs zero points, none given")
        if m.g_idx is not None:
            _expect(f"{name}.g_idx", m.g_idx, (num_experts, k), torch.int32)
        if m.global_scale is not None:
            _expect(f"{name}.global_scale", m.global_scale, (num_experts,), torch.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scheme!r})"


def _expect(name: str, t: torch.Tensor, shape, dtype) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def blockwise_amax(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """[E, N, K] -> [E, ceil(N/gn), ceil(K/gk)] absolute maxima over each scale block (edge blocks
    may be partial)."""
    e, n, k = w.shape
    gn, gk = spec.group_n or n, spec.group_k or k
    nb, kb = -(-n // gn), -(-k // gk)
    a = torch.nn.functional.pad(w.float().abs(), (0, kb * gk - k, 0, nb * gn - n))
    return a.reshape(e, nb, gn, kb, gk).amax(dim=(2, 4))


def expand_blocks(per_block: torch.Tensor, spec: QuantSpec, n: int, k: int) -> torch.Tensor:
    """[E, ceil(N/gn), ceil(K/gk)] -> [E, N, K]: each element takes its block's value (no act-order)."""
    gn, gk = spec.group_n or n, spec.group_k or k
    return per_block.repeat_interleave(gn, dim=1)[:, :n].repeat_interleave(gk, dim=2)[:, :, :k]
