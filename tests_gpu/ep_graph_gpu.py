"""A whole expert-parallel layer forward (router, fused routing, fixed-capacity dispatch, shared
experts during the dispatch, local experts, combine) captured in one CUDA graph, one process per GPU:

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 tests_gpu/ep_graph_gpu.py

Each rank captures ``layer(x)`` for its own token count (different per rank), then replays the graph
on fresh inputs copied into the captured input and compares the output with the eager forward
(the same kernels: within 1e-3, in practice bit for bit) and with the
single-device layer (within 1e-2). Rank 0 prints one line per check and exits 1 on any failure."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

import moekit
from moekit.cli.presets import PRESETS


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(name: str, device) -> list[tuple[str, float, float]]:
    preset = PRESETS[name]
    rank = dist.get_rank()
    torch.manual_seed(0)
    single = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device)
    ep = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device,
                    parallel=moekit.ExpertParallel(max_tokens_per_rank=256))
    ep.load_state_dict(single.state_dict())
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


def main() -> int:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    device = torch.device("cuda", local)
    mine = []
    for name in sys.argv[1:] or ["deepseek-v3", "qwen3-30b-a3b"]:
        mine += check(name, device)
        torch.cuda.empty_cache()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    failed = False
    if dist.get_rank() == 0:
        for i, (label, _, _) in enumerate(mine):
            vs_eager = max(r[i][1] for r in everyone)
            vs_single = max(r[i][2] for r in everyone)
            ok = vs_eager <= 1e-3 and vs_single <= 1e-2
            failed |= not ok
            print(f"{'PASS' if ok else 'FAIL'}  replay vs eager {vs_eager:.1e}, vs single-device {vs_single:.2e}  {label}")
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
