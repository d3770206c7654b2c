"""What a checkpoint layout's reader hands back for one linear projection: a validated promise of
its tensors in moekit's quantized layout, converted only when called."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moekit._checks import check_tensor
from moekit.quant.spec import QuantizedMatrix


@dataclass(frozen=True)
class Projection:
    """One projection [N, K] as a one-expert QuantizedMatrix [1, N, K], with its static input scale."""

    matrix: QuantizedMatrix
    input_scale: torch.Tensor | None = None  # fp32 scalar (fp8-per-tensor-static)


# A reader validates every tensor of a projection, then returns this; calling it converts them.
PendingProjection = Callable[[], Projection]


FLOAT_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def expect(full_name: str, t, shape: tuple[int, ...] | None, dtypes: tuple[torch.dtype, ...] | None,
           what: str = "") -> None:
    """A ValueError/TypeError naming the checkpoint tensor if it is not a tensor of this shape and dtype."""
    label = repr(full_name) + (f" ({what})" if what else "")
    check_tensor(label, t)
    if dtypes is not None and t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{label} must have dtype {names}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{label} must have shape {tuple(shape)}, got {tuple(t.shape)}")
