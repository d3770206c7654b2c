"""The fixed-capacity dispatch's messages built by one Triton launch (triton_ops/dispatch_meta.py, in
the CPU interpreter) against the PyTorch construction the CPU path keeps (ep/all_to_all_padded.py)."""

import types

import pytest
import torch

from moekit.ep.all_to_all_padded import PaddedAllToAllPrepareFinalize, packed_width
from moekit.ep.placement import ExpertPlacement
from moekit.triton_ops.dispatch_meta import dispatch_meta, dispatch_packed, unpack_messages


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens,capacity", [(5, 8), (0, 3), (20, 20)])
def test_packed_rows_match_the_pytorch_construction(dtype, tokens, capacity):
    placement = ExpertPlacement(9, ((0, 1, 2, 3, 8), (4, 5, 6, 7, 0, 3, 8)))  # with replicas
    top_k, hidden = 3, 300  # hidden not a multiple of the copy's 256-column step
    ids = torch.stack([torch.randperm(9)[:top_k] for _ in range(tokens)]).to(torch.int32) \
        if tokens else torch.zeros(0, top_k, dtype=torch.int32)
    x = torch.randn(tokens, hidden).to(dtype)
    pf = PaddedAllToAllPrepareFinalize.__new__(PaddedAllToAllPrepareFinalize)
    pf.comm, pf.capacity, pf.tables = types.SimpleNamespace(world_size=2), capacity, placement.tables("cpu")
    weights = torch.rand(tokens, top_k)
    expected = pf.packed_messages(x, ids, weights)  # the PyTorch construction (CPU tensors)
    width = packed_width(hidden, top_k, dtype)
    poisoned = torch.full((2, capacity, width), float("nan"), dtype=dtype)  # every element must be written
    got = dispatch_packed(x, ids, weights, pf.tables, 2, capacity, width, out=poisoned)
    assert torch.equal(got.view(torch.int16 if dtype == torch.float16 else torch.int32),
                       expected.view(torch.int16 if dtype == torch.float16 else torch.int32))
    assert torch.equal(got[:, :tokens, :hidden], x.unsqueeze(0).expand(2, -1, -1))


def test_packed_width_keeps_the_words_aligned():
    assert packed_width(7168, 8, torch.bfloat16) == 7168 + 32
    assert packed_width(2048, 8, torch.float32) == 2048 + 16
    assert packed_width(7, 8, torch.bfloat16) is None  # 14-byte rows: the words would straddle


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unpacking_received_rows_gives_their_ids_and_weights(dtype):
    rows, hidden, top_k = 70, 36, 3
    width = packed_width(hidden, top_k, dtype)
    ids = torch.randint(-1, 9, (rows, top_k), dtype=torch.int32)
    weights = torch.rand(rows, top_k)
    received = torch.randn(rows, width).to(dtype)
    received[:, hidden:] = torch.cat([ids, weights.view(torch.int32)], 1).view(dtype)
    got_ids, got_weights = unpack_messages(received, hidden, top_k)
    assert torch.equal(got_ids, ids) and torch.equal(got_weights, weights)
    assert got_ids.is_contiguous() and got_weights.is_contiguous()
