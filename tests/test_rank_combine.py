"""The fixed-capacity all-to-all's combine kernel (triton_ops/rank_combine.py) in Triton's CPU
interpreter, against the PyTorch sums it replaces on GPUs."""

import pytest
import torch

from moekit.triton_ops.rank_combine import sum_rank_blocks


@pytest.mark.parametrize("world,dtype,with_shared", [(2, torch.float32, False), (3, torch.float16, True),
                                                     (4, torch.float32, True)])
def test_sums_every_rank_block_and_the_shared_output(world, dtype, with_shared):
    capacity, hidden, tokens = 6, 1100, 4  # hidden past one 1024-wide block: a masked second block
    back = torch.randn(world, capacity, hidden).to(dtype)
    back[:, tokens:] = float("nan")  # rows past the tokens are never read
    shared = torch.randn(tokens, hidden).to(dtype) if with_shared else None
    out = sum_rank_blocks(back, tokens, shared, torch.float16)
    expected = back[:, :tokens].float().sum(0) + (shared.float() if with_shared else 0)
    assert out.dtype == torch.float16 and out.shape == (tokens, hidden)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected.to(torch.float16).float(), rtol=1e-3, atol=1e-3)


def test_no_tokens_gives_an_empty_output():
    out = sum_rank_blocks(torch.randn(2, 3, 8), 0, None, torch.float32)
    assert out.shape == (0, 8)
