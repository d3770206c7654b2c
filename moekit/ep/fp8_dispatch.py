"""Optional fp8 dispatch (``ExpertParallel(fp8_dispatch=True)``): token rows cross the group as e4m3
codes with one fp32 scale per row (the row's absolute maximum over 448), half the bytes of bf16,
and are dequantized to the layer's dtype where they arrive. The experts then see each token as
``quant.dequant.fake_quantize_activations`` with a per-token fp8 scale makes it: an activation
quantization error, so it is off by default. The combine stays in the layer dtype."""

from __future__ import annotations

import torch

from moekit.quant.dequant import quantize_activations
from moekit.quant.fp8 import SPECS

PER_TOKEN = SPECS["fp8-per-channel"]  # e4m3 activations, one dynamic scale per token


def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, H] -> (codes as bytes [T, H], scale bits [T, 1] int32) for the messages. On CUDA one
    fused Triton pass (the w8a8 kernels' own quantizer, bit-identical to the reference); elsewhere
    the PyTorch reference."""
    codes, scale = _quantize_triton(x) if x.is_cuda else quantize_activations(x, PER_TOKEN)
    return codes.view(torch.uint8), scale.reshape(-1, 1).float().view(torch.int32)


def _quantize_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from moekit.triton_ops.activation_quant import quantize_rows

    rows = quantize_rows(x, PER_TOKEN)
    return rows.codes, rows.scale


def decode(codes: torch.Tensor, scale_bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.view(torch.float8_e4m3fn).float() * scale_bits.contiguous().view(torch.float32)).to(dtype)
