"""How the expert-parallel bench times a step: every rank starts together (a barrier after a sync),
wall clock around the call; or the step captured several times into one CUDA graph and replayed."""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist


def median_ms(fn, iters: int) -> float:
    """Median wall-clock ms of ``fn()`` over ``iters`` calls, each started on every rank together."""
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def graph_ms(step, iters: int, row: dict, name: str, repeat: int = 10) -> float:
    """Median ms of ``step``, captured ``repeat`` times into one CUDA graph and replayed (the host's
    launch and sync spread over the repeats: the GPU's own time per step); NaN (and the error in
    ``row``) if capture fails."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeat):
                step()
        graph.replay()
        return median_ms(graph.replay, iters) / repeat
    except Exception as e:  # recorded, not fatal: the eager numbers stand
        row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
        return float("nan")
