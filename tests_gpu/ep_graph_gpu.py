"""A whole expert-parallel layer forward (router, fused routing, fixed-capacity dispatch, shared
experts during the dispatch, local experts, combine) captured in one CUDA graph, one process per GPU:

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 tests_gpu/ep_graph_gpu.py

Each rank captures ``layer(x)`` for its own token count (different per rank), then replays the graph
on fresh inputs copied into the captured input and compares the output with the eager forward
(the same kernels: within 1e-3, in practice bit for bit) and with the
single-device layer (within 1e-2). Rank 0 prints one line per check and exits 1 on any failure."""

from __future__ import annotations

import torch
import torch.distributed as dist

import moekit
from moekit.cli.presets import PRESETS
from ep_harness import rel, run, single_and_ep


def check(name: str, device) -> list[tuple[str, float, float]]:
    preset = PRESETS[name]
    rank = dist.get_rank()
    single, ep = single_and_ep(name, device, moekit.ExpertParallel(max_tokens_per_rank=256))
    tokens = 37 + 150 * rank
    static_x = torch.randn(tokens, preset.hidden_size, device=device, dtype=torch.bfloat16)
    results = []
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (compiles, caches) off the default stream, as capture wants
            for _ in range(2):
                ep(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = ep(static_x)
        for trial in range(3):
            torch.manual_seed(100 + 10 * trial + rank)
            x = torch.randn_like(static_x)
            static_x.copy_(x)
            graph.replay()
            torch.cuda.synchronize()
            eager = ep(x)
            results.append((f"{name} / replay {trial} (shared experts: {ep.shared_experts is not None})",
                            rel(static_out, eager), rel(static_out, single(x))))
    return results


def judge(per_rank) -> tuple[bool, str]:
    vs_eager, vs_single = max(r[0] for r in per_rank), max(r[1] for r in per_rank)
    return vs_eager <= 1e-3 and vs_single <= 1e-2, f"replay vs eager {vs_eager:.1e}, vs single-device {vs_single:.2e}"


if __name__ == "__main__":
    raise SystemExit(run(check, judge, ["deepseek-v3", "qwen3-30b-a3b"]))
