"""gpt-oss's mxfp4 experts (``quant_method: mxfp4``), as transformers' gpt-oss mxfp4 integration
reads them (``convert_moe_packed_tensors``):

================================  ==========================================================
``experts.gate_up_proj_blocks``   uint8 [E, 2I, H/32, 16]: e2m1 codes two per byte, even column
                                  in the low nibble; rows interleaved gate0, up0, gate1, ...
``experts.gate_up_proj_scales``   uint8 [E, 2I, H/32]: e8m0 exponents, bias 127
``experts.gate_up_proj_bias``     [E, 2I] float, interleaved like the rows
``experts.down_proj_blocks``      uint8 [E, H, I/32, 16]
``experts.down_proj_scales``      uint8 [E, H, I/32]
``experts.down_proj_bias``        [E, H] float
================================  ==========================================================

The blocks are moekit's mxfp4 codes ([E, N, K/2]) once the last two dimensions are merged, and
the scales are its e8m0 scales as they are: no value changes, only the gate/up row order when the
layer is concatenated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moekit.activations import GateUpLayout
from moekit.checkpoints.per_expert import Experts
from moekit.checkpoints.projection import FLOAT_SCALE_DTYPES, expect
from moekit.integrations.hf_state_dict import _to_layout, own_expert_rows
from moekit.quant.spec import QuantizedMatrix

BLOCK = 32  # e2m1 values per e8m0 scale: 16 bytes of a block


def has_layout(reader) -> bool:
    return reader.has("experts.gate_up_proj_blocks") or reader.has("experts.down_proj_blocks")


def read_experts(layer, reader) -> Callable[[], Experts]:
    """Validate gpt-oss's expert tensors under ``reader`` and return their conversion."""
    if layer.quant != "mxfp4":
        raise ValueError(f"{reader.prefix}experts.gate_up_proj_blocks: gpt-oss mxfp4 experts need a layer built "
                         f"with quant='mxfp4', got {layer.quant!r}")
    if not layer.activation.gated:
        raise ValueError(f"{reader.prefix}experts.gate_up_proj_blocks: gpt-oss experts are gated (gate and up rows)")
    e, h, i = layer.num_experts, layer.hidden_size, layer.intermediate_size
    own = own_expert_rows(layer)  # an expert-parallel rank reads its own experts' rows only
    gate_up = _read_matrix(reader, "experts.gate_up_proj", e, 2 * i, h, own)
    down = _read_matrix(reader, "experts.down_proj", e, h, i, own)
    biases = None
    if layer.w13_bias is not None:
        b13 = reader.take_rows("experts.gate_up_proj_bias", own, (e, 2 * i))
        expect(reader.prefix + "experts.gate_up_proj_bias", b13, None, FLOAT_SCALE_DTYPES)
        b2 = reader.take_rows("experts.down_proj_bias", own, (e, h))
        expect(reader.prefix + "experts.down_proj_bias", b2, None, FLOAT_SCALE_DTYPES)
        biases = (b13, b2)

    def convert() -> Experts:
        # the checkpoint's rows are interleaved; the layer may want them concatenated
        rows = lambda t: _to_layout(t, GateUpLayout.INTERLEAVED, layer)  # noqa: E731
        w13 = QuantizedMatrix(data=rows(gate_up[0]), scale=rows(gate_up[1]))
        w2 = QuantizedMatrix(data=down[0], scale=down[1])
        if biases is None:
            return Experts(w13, w2, local=own is not None)
        return Experts(w13, w2, w13_bias=rows(biases[0]), w2_bias=biases[1], local=own is not None)

    return convert


def _read_matrix(reader, name: str, e: int, n: int, k: int, own) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [E', N, K/2], e8m0 scales [E', N, K/32]) of one projection, validated: all E experts,
    or the rows ``own``."""
    if k % BLOCK:
        raise ValueError(f"{reader.prefix + name + '_blocks'!r}: mxfp4 blocks of {BLOCK} columns do not divide "
                         f"its input dimension {k}")
    blocks = reader.take_rows(f"{name}_blocks", own, (e, n, k // BLOCK, BLOCK // 2), "e2m1 codes, two per byte")
    expect(reader.prefix + f"{name}_blocks", blocks, None, (torch.uint8,), what="e2m1 codes, two per byte")
    scales = reader.take_rows(f"{name}_scales", own, (e, n, k // BLOCK), "e8m0 scales")
    expect(reader.prefix + f"{name}_scales", scales, None, (torch.uint8,), what="e8m0 scales")
    return blocks.reshape(blocks.shape[0], n, k // 2), scales


__all__ = ["has_layout", "read_experts"]
