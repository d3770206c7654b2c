"""The combine of the fixed-capacity all-to-all (ep/all_to_all_padded.py) in one pass: each token's
row from every rank's returned block summed in fp32 in rank order, the shared experts' output added,
cast to the output dtype. In PyTorch that took ``back.float().sum(0) + shared`` and a cast: three
passes and two fp32 buffers of [W, T, H] and [T, H], as long as the transfers themselves at 8192
tokens per rank (docs/benchmarks.md, expert parallelism)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.triton_ops.launcher import cdiv, launch, next_pow2


@triton.jit
def _sum_rank_blocks(back_ptr, shared_ptr, out_ptr, H, rows_per_rank, stride_b, stride_s, stride_o,
                     WORLD: tl.constexpr, HAS_SHARED: tl.constexpr, BLOCK_H: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = hs < H
    total = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for rank in tl.static_range(WORLD):
        total += tl.load(back_ptr + (rank * rows_per_rank + token) * stride_b + hs, mask=ok, other=0.0).to(tl.float32)
    if HAS_SHARED:
        total += tl.load(shared_ptr + token * stride_s + hs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * stride_o + hs, total.to(out_ptr.dtype.element_ty), mask=ok)


def sum_rank_blocks(back: torch.Tensor, num_tokens: int, shared: torch.Tensor | None, out_dtype) -> torch.Tensor:
    """back [W, capacity, H] -> [num_tokens, H] in out_dtype: sum over W of rows 0..num_tokens - 1
    (fp32, in rank order), plus ``shared`` [num_tokens, H] when given."""
    world, _, hidden = back.shape
    out = torch.empty(num_tokens, hidden, dtype=out_dtype, device=back.device)
    if num_tokens == 0:
        return out
    if back.stride(2) != 1 or back.stride(0) != back.shape[1] * back.stride(1):
        back = back.contiguous()
    if shared is not None and shared.stride(1) != 1:
        shared = shared.contiguous()
    block_h = min(1024, next_pow2(hidden))
    launch(_sum_rank_blocks, (num_tokens, cdiv(hidden, block_h)),
           (back, shared if shared is not None else back, out, hidden, back.shape[1], back.stride(1),
            shared.stride(0) if shared is not None else 0, out.stride(0)),
           dict(WORLD=world, HAS_SHARED=shared is not None, BLOCK_H=block_h), 4, 1)
    return out
