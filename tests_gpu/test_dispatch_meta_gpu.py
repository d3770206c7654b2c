"""The fixed-capacity dispatch's messages built on the GPU (triton_ops/dispatch_meta.py) against the
PyTorch construction on the CPU, at DeepSeek-V3's routing (256 experts, top 8) and real batch sizes."""

import types

import pytest
import torch

from moekit.ep.all_to_all_padded import PaddedAllToAllPrepareFinalize
from moekit.ep.placement import ExpertPlacement


def _pf(placement, capacity, device):
    pf = PaddedAllToAllPrepareFinalize.__new__(PaddedAllToAllPrepareFinalize)
    world = len(placement.ranks)
    pf.comm, pf.capacity, pf.tables = types.SimpleNamespace(world_size=world), capacity, placement.tables(device)
    return pf


@pytest.mark.parametrize("tokens,capacity", [(1, 1), (64, 64), (1000, 1024), (8192, 8192)])
@pytest.mark.parametrize("world", [2, 8])
def test_gpu_messages_equal_the_cpu_construction(tokens, capacity, world):
    placement = ExpertPlacement.contiguous(256, world)
    ids = torch.stack([torch.randperm(256)[:8] for _ in range(tokens)]).to(torch.int32)
    weights = torch.rand(tokens, 8)
    expected = _pf(placement, capacity, "cpu").messages(ids, weights, extra_columns=1)
    got = _pf(placement, capacity, "cuda").messages(ids.cuda(), weights.cuda(), extra_columns=1).cpu()
    # the extra column is the caller's (fp8 scales): compare the ids and weights
    assert torch.equal(got[..., :16], expected[..., :16])
    assert (got[:, :, :8] >= 0).sum().item() == tokens * 8


@pytest.mark.parametrize("tokens,capacity", [(1, 1), (200, 256), (8192, 8192)])
def test_gpu_packed_rows_equal_the_cpu_construction(tokens, capacity):
    placement = ExpertPlacement.contiguous(256, 2)
    ids = torch.stack([torch.randperm(256)[:8] for _ in range(tokens)]).to(torch.int32)
    weights, x = torch.rand(tokens, 8), torch.randn(tokens, 7168).to(torch.bfloat16)
    expected = _pf(placement, capacity, "cpu").packed_messages(x, ids, weights)
    got = _pf(placement, capacity, "cuda").packed_messages(x.cuda(), ids.cuda(), weights.cuda()).cpu()
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))
