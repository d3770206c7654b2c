"""The interval arithmetic the expert-parallel profile reports overlap with (moekit/bench/ep_profile.py)."""

from moekit.bench.ep_profile import overlap_us, union_spans


def test_union_merges_touching_and_nested_spans():
    assert union_spans([(5, 7), (0, 2), (1, 3), (6, 6.5), (3, 4)]) == [[0, 4], [5, 7]]
    assert union_spans([]) == []


def test_overlap_counts_concurrent_time_once():
    nccl = [(10, 50), (40, 60)]  # two kernels of one stream, overlapping each other: 10..60
    compute = [(0, 20), (15, 30), (55, 80)]  # 0..30 and 55..80
    assert overlap_us(nccl, compute) == (30 - 10) + (60 - 55)
    assert overlap_us(nccl, []) == 0.0
    assert overlap_us([(0, 1)], [(1, 2)]) == 0.0  # touching is not concurrent
