"""Expert placement and load balancing without processes: placements, pair routes to replicas, the
sliding-window load counts, and the rebalancer on skewed (Zipf) traces."""

import pytest
import torch

from moekit.ep.eplb import ExpertLoadStats, imbalance, rebalance, zipf_load
from moekit.ep.placement import ExpertPlacement, route_pairs


def test_contiguous_placement_splits_uneven_counts():
    p = ExpertPlacement.contiguous(10, 4)
    assert p.ranks == ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))
    assert p.replica_counts() == [1] * 10


@pytest.mark.parametrize("ranks,match", [
    (((0, 1), (2,)), "missing \\[3\\]"),
    (((0, 1, 1), (2, 3)), "holds a logical expert twice"),
    (((0, 1, 4), (2, 3)), "out of range \\[4\\]"),
])
def test_placement_refuses_bad_layouts(ranks, match):
    with pytest.raises(ValueError, match=match):
        ExpertPlacement(4, ranks)


def test_more_ranks_than_experts_is_refused():
    with pytest.raises(ValueError, match="at least as many experts"):
        ExpertPlacement.contiguous(3, 4)


def test_pairs_go_to_replicas_by_token_index():
    p = ExpertPlacement(4, ((0, 1, 3), (2, 3)))  # expert 3 on both ranks
    ids = torch.tensor([[3, 0], [3, 2], [3, 1], [1, 3]])
    routes = route_pairs(ids, p.tables("cpu"))
    # expert 3: token t -> replica t % 2: rank 0 (local 2) for even t, rank 1 (local 1) for odd t
    assert routes.rank.tolist() == [[0, 0], [1, 1], [0, 0], [0, 1]]
    assert routes.local.tolist() == [[2, 0], [1, 0], [2, 1], [1, 1]]


def test_load_stats_keep_a_sliding_window():
    stats = ExpertLoadStats(4, window=2, device="cpu")
    stats.record(torch.tensor([[0, 1], [0, 2]]))
    stats.record(torch.tensor([[3, 3], [-1, 9]]))  # out-of-range ids are not counted
    assert stats.load().tolist() == [2, 1, 1, 2]
    stats.record(torch.tensor([[1, 2]]))  # the first step leaves the window
    assert stats.load().tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("experts", [64, 256])
def test_rebalancer_cuts_the_imbalance_of_a_zipf_trace(world, experts):
    load = zipf_load(experts, 200_000, seed=world)
    before = imbalance(load, ExpertPlacement.contiguous(experts, world)).max_over_mean
    same_slots = rebalance(load, world, experts // world)
    spare_slot = rebalance(load, world, experts // world + 1)
    assert imbalance(load, same_slots).max_over_mean <= before
    after = imbalance(load, spare_slot).max_over_mean
    assert after < before and after < 1.05
    assert all(len(r) == experts // world + 1 for r in spare_slot.ranks)
    assert sum(spare_slot.replica_counts()) == world * (experts // world + 1)


def test_rebalancer_refuses_too_few_slots():
    with pytest.raises(ValueError, match="fewer than the 16 logical ones"):
        rebalance(torch.ones(16), 2, 7)


def test_fp8_dispatch_encoding_triton_matches_the_reference():
    # the CUDA path's fused quantizer, run here under Triton's interpreter, against the reference
    from moekit.ep import fp8_dispatch
    from moekit.quant.dequant import quantize_activations

    x = torch.randn(9, 96) * torch.logspace(-2, 1, 96)
    codes, scale = fp8_dispatch._quantize_triton(x)
    want_codes, want_scale = quantize_activations(x, fp8_dispatch.PER_TOKEN)
    assert torch.equal(codes.view(torch.uint8), want_codes.view(torch.uint8))
    assert torch.equal(scale.reshape(-1), want_scale.reshape(-1))
    encoded, bits = fp8_dispatch.encode(x)
    decoded = fp8_dispatch.decode(encoded, bits, torch.float32)
    assert ((decoded - x).norm() / x.norm()).item() < 0.05 and not torch.equal(decoded, x)
