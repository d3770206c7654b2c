"""Decode graphs on an expert-parallel layer (fixed capacity), one process per GPU:

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 tests_gpu/ep_decode_graphs_gpu.py

Each rank runs the same sequence of forwards twice, eagerly and then with ``use_decode_graphs``,
its token counts differing from the other ranks' (so the ranks capture at different calls and
replay graphs of different sizes against each other's eager first calls). Every graphed output must
equal the eager one bit for bit, and the single-device layer within 1e-2. Rank 0 prints one line
per check and exits 1 on any failure."""

from __future__ import annotations

import torch
import torch.distributed as dist

import moekit
from moekit.cli.presets import PRESETS
from ep_harness import rel, run, single_and_ep

TOKENS = {0: [1, 3, 1, 8, 3, 1], 1: [2, 2, 5, 1, 2, 7]}


def check(name: str, device) -> list[tuple[str, float, float]]:
    preset = PRESETS[name]
    rank = dist.get_rank()
    single, ep = single_and_ep(name, device, moekit.ExpertParallel(max_tokens_per_rank=64))
    torch.manual_seed(10 + rank)
    xs = [torch.randn(t, preset.hidden_size, device=device, dtype=torch.bfloat16)
          for t in TOKENS[rank % 2]]
    with torch.no_grad():
        eager = [ep(x) for x in xs]
        ep.use_decode_graphs(8)
        graphed = [ep(x) for x in xs]
        replays = sorted(ep._decode_graphs.graphs)
        return [(f"{name} / forward {i}: {x.shape[0]} tokens on rank {rank}, graphs {replays}",
                 0.0 if torch.equal(g, e) else float("inf"), rel(g, single(x)))
                for i, (x, g, e) in enumerate(zip(xs, graphed, eager))]


def judge(per_rank) -> tuple[bool, str]:
    vs_eager, vs_single = max(r[0] for r in per_rank), max(r[1] for r in per_rank)
    return vs_eager == 0.0 and vs_single <= 1e-2, f"graphed == eager: {vs_eager == 0.0}, vs single {vs_single:.2e}"


if __name__ == "__main__":
    raise SystemExit(run(check, judge, ["deepseek-v3", "qwen3-30b-a3b"]))
