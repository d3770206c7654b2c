"""Invariants of the expert-sorted routing metadata, on their own."""

import pytest
import torch

from moekit.kernel.metadata import sort_by_expert


@pytest.mark.parametrize(
    "tokens,experts,top_k",
    [
        (1, 1, 1),  # smallest
        (0, 4, 2),  # empty batch
        (37, 7, 3),  # odd expert count
        (5, 4096, 8),  # 4096 experts, almost all empty (illegal-memory-access case elsewhere)
        (300, 64, 8),  # every expert hit
    ],
)
def test_sort_invariants(tokens, experts, top_k):
    ids = torch.stack([torch.randperm(experts)[:top_k] for _ in range(tokens)]) if tokens else \
        torch.empty(0, top_k, dtype=torch.long)
    meta = sort_by_expert(ids.int(), experts)
    flat = ids.reshape(-1)
    # order is a permutation that groups rows by expert, stably.
    assert torch.equal(meta.order.sort().values, torch.arange(tokens * top_k))
    sorted_ids = flat[meta.order]
    assert torch.equal(sorted_ids, flat.sort(stable=True).values)
    assert torch.equal(meta.token_of_row, meta.order // top_k)
    # counts are the histogram, offsets its exclusive cumulative sum.
    assert torch.equal(meta.counts, torch.bincount(flat, minlength=experts))
    assert meta.offsets[0] == 0 and torch.equal(meta.offsets[1:], meta.counts.cumsum(0))
    # segments cover each hit expert's rows exactly once, and never mix experts.
    covered = 0
    for expert, start, end in meta.segments():
        assert end > start
        assert torch.all(sorted_ids[start:end] == expert)
        covered += end - start
    assert covered == tokens * top_k
