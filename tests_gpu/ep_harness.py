"""What the two-GPU expert-parallel scripts share: one process per GPU under torchrun, checks per
preset on every rank, results gathered to rank 0, one PASS/FAIL line per check, exit 1 on a FAIL."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist

Check = Callable[[str, torch.device], list[tuple]]  # (preset, device) -> [(label, *numbers)] on this rank
Judge = Callable[[list[tuple]], tuple[bool, str]]  # one check's numbers from every rank -> (ok, text)


def rel(a, b) -> float:
    if b.numel() == 0:
        return 0.0 if a.numel() == 0 else float("inf")
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def single_and_ep(name: str, device, parallel):
    """A preset's bf16 single-device layer (seed 0) and an expert-parallel one loading its state dict."""
    import moekit
    from moekit.cli.presets import PRESETS

    kwargs = dict(**PRESETS[name].layer_kwargs(), dtype=torch.bfloat16, device=device)
    torch.manual_seed(0)
    single = moekit.MoE(**kwargs)
    ep = moekit.MoE(**kwargs, parallel=parallel)
    ep.load_state_dict(single.state_dict())
    return single, ep


def run(check: Check, judge: Judge, presets: list[str]) -> int:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    device = torch.device("cuda", local)
    mine = []
    for name in sys.argv[1:] or presets:
        mine += check(name, device)
        torch.cuda.empty_cache()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    failed = False
    if dist.get_rank() == 0:
        for i, (label, *_) in enumerate(mine):
            ok, text = judge([r[i][1:] for r in everyone])
            failed |= not ok
            print(f"{'PASS' if ok else 'FAIL'}  {text}  {label}")
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failed else 0
