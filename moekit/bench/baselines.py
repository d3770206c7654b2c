"""What moekit is compared with, on moekit's own weights (never copied: DeepSeek-V3's bf16 experts
are 22.5 GB): a grouped-GEMM MoE, the transformers-style eager loop, and the float32 reference.

The eager loop is written the way transformers' eager experts are (one_hot mask, the experts that
got tokens, ``torch.where``, ``index_add_``); the reference is the same loop with each expert's
weights upcast to float32 one at a time and TF32 off, so it never holds a float32 copy of all."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

import moekit
from moekit.activations import GateUpLayout, apply_activation, parse_activation

GROUPED_MM_BACKEND = "torch-grouped-mm"


def grouped_mm_moe(x, w13, w2, topk_weights, topk_ids, activation="silu", w13_bias=None, w2_bias=None, *,
                   gate_up_layout=GateUpLayout.CONCATENATED, apply_router_weight_on_input=False) -> torch.Tensor:
    """The ``torch._grouped_mm`` MoE: moekit's grouped-mm backend, called eagerly as a user would.
    Raises ``moekit.BackendUnavailableError`` where that backend refuses the problem (fp16, rows that
    are not 16-byte aligned, ...)."""
    return moekit.fused_moe(x, w13, w2, topk_weights, topk_ids, activation, w13_bias, w2_bias,
                            gate_up_layout=gate_up_layout, apply_router_weight_on_input=apply_router_weight_on_input,
                            backend=GROUPED_MM_BACKEND)


def hf_eager_loop(x, w13, w2, topk_weights, topk_ids, activation="silu", w13_bias=None, w2_bias=None, *,
                  gate_up_layout=GateUpLayout.CONCATENATED, apply_router_weight_on_input=False) -> torch.Tensor:
    """transformers' eager experts in x.dtype: [T, H] in x.dtype."""
    return _loop_over_hit_experts(x, w13, w2, topk_weights, topk_ids, parse_activation(activation), w13_bias,
                                  w2_bias, GateUpLayout(gate_up_layout), apply_router_weight_on_input, x.dtype)


def fp32_reference(x, w13, w2, topk_weights, topk_ids, activation="silu", w13_bias=None, w2_bias=None, *,
                   gate_up_layout=GateUpLayout.CONCATENATED, apply_router_weight_on_input=False) -> torch.Tensor:
    """The same MoE in float32 (IEEE matmuls, no TF32), one expert upcast at a time: [T, H] fp32."""
    with ieee_fp32_matmul():
        return _loop_over_hit_experts(x, w13, w2, topk_weights, topk_ids, parse_activation(activation), w13_bias,
                                      w2_bias, GateUpLayout(gate_up_layout), apply_router_weight_on_input,
                                      torch.float32)


def _loop_over_hit_experts(x, w13, w2, topk_weights, topk_ids, act, w13_bias, w2_bias, layout, weight_on_input,
                           dtype) -> torch.Tensor:
    out = torch.zeros(x.shape, dtype=dtype, device=x.device)
    weights = topk_weights.to(dtype)  # transformers casts the routing weights to the hidden dtype
    # [E, k, T]: for each expert, which (slot, token) pairs chose it.
    mask = F.one_hot(topk_ids.long(), num_classes=w13.shape[0]).permute(2, 1, 0)
    hit = torch.greater(mask.sum(dim=(1, 2)), 0).nonzero().flatten().tolist()  # the loop's host sync
    for e in hit:
        slot, token = torch.where(mask[e])
        w = weights[token, slot, None]
        h = x[token].to(dtype)
        if weight_on_input:  # top_k == 1 (Llama-4): the weight scales the token, not the output
            h = h * w
        h = F.linear(h, w13[e].to(dtype), None if w13_bias is None else w13_bias[e].to(dtype))
        a = apply_activation(h, act, layout)
        y = F.linear(a, w2[e].to(dtype), None if w2_bias is None else w2_bias[e].to(dtype))
        if not weight_on_input:
            y = y * w
        out.index_add_(0, token, y)
    return out


@contextmanager
def ieee_fp32_matmul():
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 in cuBLAS
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
