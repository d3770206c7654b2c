"""How one-byte group scales (mxfp4's e8m0, nvfp4's e4m3) are laid out in memory for the kernels.

Why: the swapped tensor-core loop reads a row's scales four groups at a time as aligned 32-bit
words, which Triton's pipeliner streams by asynchronous copies (a one-byte load stays synchronous:
the loop waited on it every K step). That needs each row of scales to start on a 4-byte boundary.
gpt-oss's hidden and intermediate sizes (2880) hold 90 groups of 32: a contiguous [E, N, 90] tensor
has rows 90 bytes apart. The layer therefore keeps such scales as a view [E, N, G] of a buffer
[E, N, G rounded up to 4] (zeros past G): the same values, 2% more scale bytes, rows on word
boundaries. Nothing else changes: every reader takes the view's strides. (The layer re-lays its
scales whenever it composes its kernel: after loading, ``.to()`` — which copies a strided view
contiguous — or new weights. Its ``state_dict()`` gives them contiguous, as any state dict.)
"""

from __future__ import annotations

import torch

from moekit.quant.spec import QuantizedMatrix


def word_padded(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` ([E, N, G], one byte per group) as a view whose rows start 4-byte aligned; itself
    when they already do (words_fit) or when its scales are not one byte."""
    groups = scale.shape[-1]
    if scale.element_size() != 1 or scale.dim() != 3 or words_fit(scale):
        return scale
    padded = torch.zeros(*scale.shape[:-1], -(-groups // 4) * 4, dtype=scale.dtype, device=scale.device)
    padded[..., :groups] = scale
    return padded[..., :groups]


def words_fit(scale: torch.Tensor) -> bool:
    """Whether every row's scales can be read as whole aligned 32-bit words without leaving the
    tensor's storage (the last word of a row may cover the zeros of a word_padded buffer)."""
    if scale.element_size() != 1 or scale.dim() != 3 or scale.stride(2) != 1:
        return False
    e, n, groups = scale.shape
    words = -(-groups // 4) * 4
    if scale.stride(1) % 4 or scale.stride(0) % 4 or scale.stride(1) < words or scale.data_ptr() % 4:
        return False
    last = scale.storage_offset() + (e - 1) * scale.stride(0) + (n - 1) * scale.stride(1) + words
    return last <= scale.untyped_storage().nbytes()


def kernel_scales(m: QuantizedMatrix) -> torch.Tensor:
    """The scales as the kernels take them: e4m3 as their bytes; strided rows kept (a word_padded
    view is not copied on every call), unless zero points must share their strides."""
    scale = m.scale
    if m.zero is not None or scale.stride(-1) != 1:
        scale = scale.contiguous()
    return scale.view(torch.uint8) if scale.dtype == torch.float8_e4m3fn else scale
