"""The roofline floor of one routed-experts forward: no kernel moves fewer bytes than the distinct
experts' weights it reads plus its activations, nor does less arithmetic than its two GEMMs.

floor = max(bytes / bandwidth, flops / matmul rate), with
  bytes = distinct experts hit × bytes of one expert (w13, w2 and biases)
          + x read + out written (T·H each) + top-k ids (int32) and weights (fp32) read
  flops = 2 · T · k · (rows of w13 · H + H · I)

A quantized layer's expert bytes are the packed bytes a kernel must read: codes, scales, zero
points, act-order indices and global scales (``QuantizedMatrix.nbytes`` of one expert); x and the
output stay in the layer dtype (w8a8 kernels quantize activations on the fly). Its matmul rate is
the one its arithmetic runs at (``Ceilings.matmul_rate_for``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moekit.quant.spec import QuantizedMatrix

ROUTING_BYTES_PER_PAIR = 4 + 4  # one int32 expert id and one fp32 weight per (token, slot)


@dataclass(frozen=True)
class MoEShape:
    """What the floor needs to know of a layer."""

    top_k: int
    hidden: int
    intermediate: int
    gemm1_rows: int  # 2·I for gated activations, I for relu2
    act_bytes: int  # bytes per element of x and of the output
    expert_bytes: int  # bytes of one expert's weights and biases

    @classmethod
    def of_layer(cls, layer) -> MoEShape:
        if layer.quant_method is None:
            nbytes = expert_bytes(layer.w13, layer.w2, layer.w13_bias, layer.w2_bias)
        else:
            nbytes = quantized_expert_bytes(layer._quantized("w13"), layer._quantized("w2"), layer.w13_bias,
                                            layer.w2_bias)
        return cls(
            top_k=layer.top_k,
            hidden=layer.hidden_size,
            intermediate=layer.intermediate_size,
            gemm1_rows=layer.w13.shape[1],  # quantized data is [E, N, K or K/2]: N rows either way
            act_bytes=layer.dtype.itemsize,
            expert_bytes=nbytes,
        )


def expert_bytes(w13: torch.Tensor, w2: torch.Tensor, w13_bias=None, w2_bias=None) -> int:
    """Bytes of one expert: its slice of every per-expert tensor."""
    return expert_bytes_of(w13, w2, w13_bias, w2_bias)


def quantized_expert_bytes(w13: QuantizedMatrix, w2: QuantizedMatrix, w13_bias=None, w2_bias=None) -> int:
    """Packed bytes of one expert: its slice of every tensor of both quantized matrices (all are
    per expert: [E, ...]), plus its biases."""
    num_experts = w2.data.shape[0]
    packed = (w13.nbytes() + w2.nbytes()) // num_experts
    return packed + expert_bytes_of(w13_bias, w2_bias)


def expert_bytes_of(*tensors) -> int:
    return sum(t[0].numel() * t.element_size() for t in tensors if t is not None)


def distinct_experts(topk_ids_sets: Sequence[torch.Tensor]) -> float:
    """Experts that received at least one token, averaged over the input sets."""
    counts = [torch.unique(ids).numel() for ids in topk_ids_sets]
    return sum(counts) / len(counts)


@dataclass(frozen=True)
class Floor:
    bytes: float
    flops: float
    memory_s: float  # bytes / bandwidth
    compute_s: float  # flops / matmul rate
    distinct_experts: float
    matmul_rate: str | None = None  # which measured rate bounds the arithmetic: "bfloat16", "fp8", "int8"

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"


def roofline_floor(shape: MoEShape, tokens: int, distinct: float, bandwidth: float, matmul_rate: float,
                   rate_name: str | None = None) -> Floor:
    pairs = tokens * shape.top_k
    moved = (distinct * shape.expert_bytes + 2 * tokens * shape.hidden * shape.act_bytes
             + pairs * ROUTING_BYTES_PER_PAIR)
    flops = 2 * pairs * (shape.gemm1_rows * shape.hidden + shape.hidden * shape.intermediate)
    return Floor(bytes=moved, flops=flops, memory_s=moved / bandwidth, compute_s=flops / matmul_rate,
                 distinct_experts=distinct, matmul_rate=rate_name)
