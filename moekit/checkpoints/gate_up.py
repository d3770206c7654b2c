"""Gate and up projections (each [E, I, H], quantized on their own) -> one w13 [E, 2I, H] in the
layer's gate/up layout, with scales that still describe every row.

- Per-row scales (groups, channels, mxfp4, nvfp4): rows and their scales are concatenated or
  interleaved together; nvfp4's per-matrix global scale and act-order ``g_idx`` must then agree
  between gate and up of each expert.
- 128x128 blocks (fp8-block128): a block of rows may not straddle gate and up, so only the
  concatenated layout with I a multiple of 128 can take them.
- One scale per matrix (fp8-per-tensor): gate and up become one matrix with the larger of the two
  scales; the other's fp8 codes are requantized to it (as vLLM does), exact when the scales agree.
"""

from __future__ import annotations

import torch

from moekit.activations import GateUpLayout
from moekit.quant import formats
from moekit.quant.spec import QuantizedMatrix, QuantSpec


def check_layout(spec: QuantSpec, layout: GateUpLayout, intermediate: int, where: str) -> None:
    """Refuse, before anything is read, a layer layout the scheme's scale blocks cannot follow."""
    if spec.group_n <= 1:
        return
    if layout is GateUpLayout.INTERLEAVED:
        raise ValueError(f"{where}: scheme {spec.scheme!r} has {spec.group_n}-row scale blocks, which cannot follow "
                         "interleaved gate/up rows; build the layer with gate_up_layout='concatenated'")
    if intermediate % spec.group_n:
        raise ValueError(f"{where}: scheme {spec.scheme!r} has {spec.group_n}-row scale blocks, so gate and up rows "
                         f"can only be stacked when the expert intermediate size ({intermediate}) is a multiple of "
                         f"{spec.group_n}")


def combine(gate: QuantizedMatrix, up: QuantizedMatrix, spec: QuantSpec, layout: GateUpLayout,
            gate_name: str, up_name: str) -> QuantizedMatrix:
    _check_agree("weight_global_scale", gate.global_scale, up.global_scale, gate_name, up_name)
    _check_agree("weight_g_idx", gate.g_idx, up.g_idx, gate_name, up_name)
    rows = (lambda a, b: torch.cat([a, b], dim=1)) if layout is GateUpLayout.CONCATENATED else \
        (lambda a, b: torch.stack([a, b], dim=2).flatten(1, 2))
    if spec.group_n == 0:  # one scale for the whole of w13
        gate, up = _common_scale(gate, up)
        scale = gate.scale
    else:
        scale = rows(gate.scale, up.scale)
    return QuantizedMatrix(
        data=rows(gate.data, up.data),
        scale=scale,
        zero=None if gate.zero is None else rows(gate.zero, up.zero),
        g_idx=gate.g_idx,
        global_scale=gate.global_scale,
    )


def _check_agree(what: str, a, b, gate_name: str, up_name: str) -> None:
    if a is None and b is None:
        return
    if (a is None) != (b is None):
        has = gate_name if a is not None else up_name
        raise ValueError(f"{has}.{what} is given but its gate/up partner's is not; both or neither")
    differ = (a != b).reshape(a.shape[0], -1).any(dim=1)
    if differ.any():
        e = int(differ.nonzero()[0])
        raise ValueError(f"{gate_name.replace('{e}', str(e))}.{what} and {up_name.replace('{e}', str(e))}.{what} "
                         f"differ (expert {e}): moekit's w13 holds gate and up rows as one matrix, which needs one "
                         f"{what} for both")


def _common_scale(gate: QuantizedMatrix, up: QuantizedMatrix) -> tuple[QuantizedMatrix, QuantizedMatrix]:
    common = torch.maximum(gate.scale, up.scale)  # [E, 1, 1]

    def requantize(m: QuantizedMatrix) -> QuantizedMatrix:
        if torch.equal(m.scale, common):
            return m
        return QuantizedMatrix(data=formats.to_fp8(m.data.float() * (m.scale / common)), scale=common)

    return requantize(gate), requantize(up)
