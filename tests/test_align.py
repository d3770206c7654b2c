"""Expert alignment on the device (triton_ops/align.py), in Triton's interpreter: both the
one-program path and the three-launch path, against the definition of the padded layout."""

import pytest
import torch

from moekit.triton_ops.align import align_pairs_by_expert, max_padded_rows


def check_layout(ids: torch.Tensor, num_experts: int, block_m: int, aligned) -> None:
    flat = ids.reshape(-1).long()
    num_pairs = flat.numel()
    valid = (flat >= 0) & (flat < num_experts)
    counts = torch.bincount(flat[valid], minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    num_rows = int(aligned.num_rows)
    assert num_rows == int(padded.sum())
    assert aligned.sorted_pairs.numel() == max_padded_rows(num_pairs, num_experts, block_m) >= num_rows
    rows = aligned.sorted_pairs[:num_rows].long()
    starts = torch.cumsum(padded, 0) - padded
    for e in range(num_experts):
        run = rows[starts[e]: starts[e] + padded[e]]
        real = run[: counts[e]]
        # The expert's pairs, each once, then sentinels up to the block boundary.
        assert sorted(real.tolist()) == torch.nonzero(flat == e).flatten().tolist()
        assert (run[counts[e]:] == num_pairs).all()
        blocks = aligned.block_expert[starts[e] // block_m: (starts[e] + padded[e]) // block_m]
        assert (blocks == e).all()


CASES = [
    # tokens, top_k, experts, block_m
    (1, 1, 1, 16),
    (1, 8, 128, 16),
    (37, 2, 8, 16),
    (50, 6, 7, 32),  # E not a power of two
    (9, 4, 300, 64),  # more experts than pairs
    (200, 8, 64, 16),
    (3, 2, 4096, 16),  # very many experts
]


@pytest.mark.parametrize("single_program", [True, False], ids=["one-program", "three-launches"])
@pytest.mark.parametrize("case", CASES)
def test_layout(case, single_program):
    tokens, top_k, num_experts, block_m = case
    ids = torch.stack([torch.randperm(num_experts)[:top_k] if top_k <= num_experts else
                       torch.randint(0, num_experts, (top_k,)) for _ in range(tokens)]).to(torch.int32)
    aligned = align_pairs_by_expert(ids, num_experts, block_m, single_program_max_pairs=10**9 if single_program else 0)
    check_layout(ids, num_experts, block_m, aligned)


@pytest.mark.parametrize("single_program", [True, False], ids=["one-program", "three-launches"])
def test_out_of_range_ids_are_left_out(single_program):
    ids = torch.randint(0, 10, (64, 4), dtype=torch.int64)
    ids[::3, 1] = -1
    ids[::5, 2] = 10
    ids[7, 0] = 2**40
    aligned = align_pairs_by_expert(ids, 10, 16, single_program_max_pairs=10**9 if single_program else 0)
    check_layout(ids, 10, 16, aligned)


def test_all_pairs_to_one_expert():
    ids = torch.full((100, 1), 5, dtype=torch.int32)
    aligned = align_pairs_by_expert(ids, 8, 32)
    check_layout(ids, 8, 32, aligned)
    assert int(aligned.num_rows) == 128
