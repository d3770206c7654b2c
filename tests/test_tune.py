"""The unquantized tuner (tuning/tuner.py) in the interpreter, with an injected timer: it times
every candidate through the given ``bench_ms`` (graph replay on a GPU: tuning/timing.py) and keeps
the fastest per GEMM."""

import torch

from moekit.activations import parse_activation
from moekit.tuning import quant_tuner, timing
from moekit.tuning.search_space import gemm_candidates
from moekit.tuning.tuner import TuneShape, tune_shape


def test_tuner_keeps_the_candidate_its_timer_calls_fastest():
    shape = TuneShape(4, 2, 32, 32, torch.float32, parse_activation("silu"))
    gemm1_space, gemm2_space = gemm_candidates(16, True), gemm_candidates(16, False)
    calls = []

    def bench_ms(fn):  # the 8th gemm1 and the 5th gemm2 candidate are the fast ones
        fn()  # the timed callable runs the candidate's kernel
        calls.append(len(calls))
        index = len(calls) - 1
        fast = index == 7 if index < len(gemm1_space) else index - len(gemm1_space) == 4
        return 0.002 if fast else 0.005

    [result] = tune_shape(shape, buckets=(4,), device="cpu", compile_workers=1, bench_ms=bench_ms)
    assert len(calls) == len(gemm1_space) + len(gemm2_space)  # every candidate timed once
    assert result.tiles.block_m == 16
    assert result.tiles.gemm1 == gemm1_space[7] and result.tiles.gemm2 == gemm2_space[4]
    assert result.gemm1_us == result.gemm2_us == 2.0  # ms from the timer, reported in µs


def test_both_tuners_default_to_graph_replay():
    assert tune_shape.__defaults__[-1] is timing.graph_replay_ms
    assert timing.graph_replay_ms in quant_tuner.tune_quant_shape.__defaults__
