"""How the tuners time a candidate: replayed from a CUDA graph, as ``moekit bench`` times the forward.

Why: timed eagerly, a decode-sized launch measures its host time (~150 µs for a quantized forward on
the H200 machines against ~40 µs of GPU time at 1 token; 10-30 µs per GEMM launch against a few µs
of GPU time), the same for every candidate: the tuner picked noise."""

from __future__ import annotations

from collections.abc import Callable


def graph_replay_ms(fn: Callable[[], object]) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph, L2 flushed before each replay."""
    import triton.testing

    from moekit.bench.timing import capture_rotation

    return triton.testing.do_bench(capture_rotation(lambda _: fn(), [None]), warmup=5, rep=25, return_mode="median")
