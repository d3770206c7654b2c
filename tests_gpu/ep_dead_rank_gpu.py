"""A rank that leaves an expert-parallel layer on NCCL gives its peer an error within the process
group's timeout, not a hang (two GPUs, no torchrun: this script starts the two ranks itself):

    NCCL_NVLS_ENABLE=0 python tests_gpu/ep_dead_rank_gpu.py

Both ranks run one forward; then rank 1 exits quietly (status 0, as a rank whose host died would
send no word) while rank 0 runs the next forward. NCCL's watchdog (``init_process_group(timeout=)``)
must end rank 0 with an error (its log naming the timeout or the watchdog) within the timeout plus
a margin. Exit 1 if rank 0 hangs past that, ends without an error, or its log does not say why."""

from __future__ import annotations

import datetime
import os
import re
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

TIMEOUT_S = 20
MARGIN_S = 60


def rank_main(rank: int, log_dir: str) -> None:
    log = open(os.path.join(log_dir, f"rank{rank}.log"), "w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    import torch.distributed as dist

    import moekit
    from moekit.cli.presets import PRESETS

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    preset = PRESETS["qwen3-30b-a3b"]
    layer = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device="cuda",
                       parallel=moekit.ExpertParallel(max_tokens_per_rank=64))
    x = torch.randn(16, preset.hidden_size, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)
        torch.cuda.synchronize()
        print(f"rank {rank}: first forward done", flush=True)
        if rank == 1:
            os._exit(0)
        started = time.time()
        layer(x)
        torch.cuda.synchronize()
    print(f"rank {rank}: second forward returned after {time.time() - started:.1f} s without an error", flush=True)
    os._exit(0)


def main() -> int:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    log_dir = tempfile.mkdtemp(prefix="ep-dead-rank-")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, log_dir)) for r in range(2)]
    started = time.time()
    for p in procs:
        p.start()
    procs[0].join(TIMEOUT_S + MARGIN_S + 60)  # (+ start-up and the first forward)
    elapsed = time.time() - started
    hung = procs[0].is_alive()
    for p in procs:
        if p.is_alive():
            p.kill()
    log0 = open(os.path.join(log_dir, "rank0.log")).read()
    print(log0[-3000:])
    named = re.search(r"timeout|timed out|Watchdog", log0, re.IGNORECASE) is not None
    ok = not hung and procs[0].exitcode != 0 and named and "without an error" not in log0
    print(f"{'PASS' if ok else 'FAIL'}: rank 0 {'hung' if hung else f'exited with {procs[0].exitcode}'} "
          f"{elapsed:.0f} s after start (timeout {TIMEOUT_S} s); its log {'names' if named else 'does not name'} "
          "the timeout or the watchdog")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
