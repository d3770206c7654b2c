"""The expert-parallel correctness checks at real shapes on GPUs (bf16, NCCL), one process per GPU:

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 tests_gpu/ep_check_gpu.py

For each preset every rank builds the same single-device layer (one seed) and expert-parallel layers
loading its state dict (counted all-to-all, fixed capacity, all-gather, and a placement with
redundant replicas of two experts), then compares each with the single-device kernel on the rank's
own tokens: different token counts per rank, a rank with no tokens, every pair routed to the first
k experts (all on rank 0: the other ranks receive nothing). Rank 0 prints one line per check and
exits 1 if any relative error exceeds 1e-2."""

from __future__ import annotations

import torch
import torch.distributed as dist

import moekit
from moekit.cli.presets import PRESETS
from moekit.ep.placement import ExpertPlacement
from ep_harness import rel, run


def check_preset(name: str, device) -> list[tuple[str, float]]:
    preset = PRESETS[name]
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    single = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device)
    state = single.state_dict()
    e, k, h = preset.num_experts, preset.top_k, preset.hidden_size
    ranks = [list(r) + [x for x in (0, e - 1) if x not in r] for r in ExpertPlacement.contiguous(e, world).ranks]
    forms = {
        "all-to-all": moekit.ExpertParallel(),
        "fixed capacity": moekit.ExpertParallel(max_tokens_per_rank=512),
        "all-gather": moekit.ExpertParallel(communication="all-gather"),
        "replicas of experts 0 and E-1": moekit.ExpertParallel(
            max_tokens_per_rank=512, placement=ExpertPlacement(e, tuple(tuple(r) for r in ranks))),
    }
    results = []
    for form, parallel in forms.items():
        ep = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device, parallel=parallel)
        ep.load_state_dict(state)
        cases = {"37 + 200 x rank tokens per rank": 37 + 200 * rank, "rank 1 sends no token": 0 if rank == 1 else 64}
        with torch.no_grad():
            for case, tokens in cases.items():
                torch.manual_seed(10 + rank)
                x = torch.randn(tokens, h, device=device, dtype=torch.bfloat16)
                results.append((f"{name} / {form} / {case}", rel(ep(x), single(x))))
            x = torch.randn(48, h, device=device, dtype=torch.bfloat16)
            ids = torch.arange(k, device=device).repeat(48, 1)  # every pair to experts 0..k-1
            w = torch.softmax(torch.randn(48, k, device=device), -1)
            results.append((f"{name} / {form} / every pair to experts 0..k-1",
                            rel(ep.kernel.apply(x, w, ids, ep.shared_experts), single.kernel.apply(x, w, ids,
                                                                                                 single.shared_experts))))
        del ep
        torch.cuda.empty_cache()
    return results


def judge(per_rank) -> tuple[bool, str]:
    worst = max(r[0] for r in per_rank)
    return worst <= 1e-2, f"{worst:.2e}"


if __name__ == "__main__":
    raise SystemExit(run(check_preset, judge, ["qwen3-30b-a3b", "deepseek-v3"]))
