"""The fixed-capacity dispatch's messages built by one Triton launch (triton_ops/dispatch_meta.py, in
the CPU interpreter) against the PyTorch construction the CPU path keeps (ep/all_to_all_padded.py)."""

import types

import pytest
import torch

from moekit.ep.all_to_all_padded import PaddedAllToAllPrepareFinalize
from moekit.ep.placement import ExpertPlacement
from moekit.triton_ops.dispatch_meta import dispatch_meta


def placements():
    yield ExpertPlacement.contiguous(9, 2)
    yield ExpertPlacement.contiguous(12, 4)
    # replicas: experts 0 and 8 on every rank, expert 3 twice: pairs alternate by token
    yield ExpertPlacement(9, ((0, 1, 2, 3, 8), (4, 5, 6, 7, 0, 3, 8)))


@pytest.mark.parametrize("tokens,capacity", [(5, 8), (8, 8), (0, 4), (70, 70)])
@pytest.mark.parametrize("placement", list(placements()), ids=["2 ranks", "4 ranks", "replicas"])
def test_messages_match_the_pytorch_construction(placement, tokens, capacity):
    top_k = 3
    ids = torch.stack([torch.randperm(placement.num_logical)[:top_k] for _ in range(tokens)]).to(torch.int32) \
        if tokens else torch.zeros(0, top_k, dtype=torch.int32)
    weights = torch.rand(tokens, top_k)
    world = len(placement.ranks)
    pf = PaddedAllToAllPrepareFinalize.__new__(PaddedAllToAllPrepareFinalize)
    pf.comm, pf.capacity, pf.tables = types.SimpleNamespace(world_size=world), capacity, placement.tables("cpu")
    expected = pf.messages(ids, weights)
    got = dispatch_meta(ids, weights, pf.tables, world, capacity)
    assert torch.equal(got, expected)
    served = (got[:, :, :top_k] >= 0).sum().item()
    assert served == tokens * top_k  # every pair goes to exactly one rank


def test_an_id_outside_the_placement_goes_nowhere():
    placement = ExpertPlacement.contiguous(6, 2)
    ids = torch.tensor([[0, 5], [6, -1]], dtype=torch.int32)
    meta = dispatch_meta(ids, torch.rand(2, 2), placement.tables("cpu"), 2, 2)
    assert (meta[:, 1, :2] == -1).all() and (meta[:, 1, 2:] == 0).all()
    assert meta[0, 0, 0] == 0 and meta[1, 0, 1] == 2  # expert 5 is rank 1's local 2
