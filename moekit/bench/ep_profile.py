"""The expert-parallel forward's profile (``python -m moekit.bench.ep --profile DIR``): how long
NCCL's dispatch runs beside the shared experts when the forward is replayed from a CUDA graph, and
what the forward costs eagerly, with decode graphs and replayed."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

import moekit
from moekit.bench.ep_timing import graph_ms, median_ms
from moekit.cli.presets import PRESETS


def union_spans(spans) -> list[list[float]]:
    """(start, end) intervals -> the sorted, disjoint intervals covering the same time."""
    merged = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def overlap_us(xs, ys) -> float:
    """How long some interval of ``xs`` and some interval of ``ys`` run at the same time."""
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in union_spans(xs) for b0, b1 in union_spans(ys))


def profile_overlap(name: str, tokens: int, device, out_dir: str) -> dict:
    """A preset's EP forward with shared experts (fixed capacity; the kernel runs them between issuing
    the dispatch and waiting for it): median ms eager, eager with ``use_decode_graphs``, and replayed
    from a CUDA graph; the graph replay without the shared experts and of the shared experts alone
    (the time the overlap saves: without + alone - with); and a profile of 5 replays: how long
    NCCL's kernels ran while other kernels ran too. Writes the Chrome trace of each rank."""
    from torch.profiler import ProfilerActivity, profile

    preset = PRESETS[name]
    rank = dist.get_rank()
    torch.manual_seed(0)
    layer = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device,
                       parallel=moekit.ExpertParallel(max_tokens_per_rank=tokens))
    x = torch.randn(tokens, preset.hidden_size, device=device, dtype=torch.bfloat16)
    row = {"preset": name, "tokens": tokens, "rank": rank}
    with torch.no_grad():
        for _ in range(3):
            layer(x)
        row["forward_ms"] = median_ms(lambda: layer(x), 20)
        row["forward_graph_ms"] = graph_ms(lambda: layer(x), 20, row, "forward_graph")
        layer.use_decode_graphs(tokens)  # eager calls replaying the layer's own graph
        layer(x)
        row["forward_decode_graphs_ms"] = median_ms(lambda: layer(x), 20)
        layer.use_decode_graphs(None)
        shared = layer.shared_experts
        row["shared_alone_graph_ms"] = graph_ms(lambda: shared(x), 20, row, "shared_alone")
        layer.shared_experts = None
        row["no_shared_graph_ms"] = graph_ms(lambda: layer(x), 20, row, "no_shared")
        layer.shared_experts = shared
        graph = torch.cuda.CUDAGraph()  # one forward per replay, for the trace
        with torch.cuda.graph(graph):
            layer(x)
        graph.replay()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                graph.replay()
            torch.cuda.synchronize()
    path = os.path.join(out_dir, f"ep-trace-{name}-{tokens}-rank{rank}.json")
    prof.export_chrome_trace(path)
    kernels = [e for e in json.load(open(path))["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "kernel"]
    span = lambda e: (e["ts"], e["ts"] + e["dur"])  # noqa: E731
    nccl = [span(e) for e in kernels if "nccl" in e["name"].lower()]
    other = [span(e) for e in kernels if "nccl" not in e["name"].lower()]
    row |= {"replays": 5, "nccl_us": sum(b - a for a, b in union_spans(nccl)),
            "nccl_beside_compute_us": overlap_us(nccl, other), "trace": path}
    return row
