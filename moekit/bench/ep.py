"""Expert-parallel check and benchmark, one process per GPU under torchrun:

    torchrun --nproc-per-node 2 -m moekit.bench.ep --preset deepseek-v3 --preset qwen3-30b-a3b \\
        --tokens 1,64,1024,8192 --json ep.json

Per preset every rank builds the same single-device layer (bf16, one seed) and expert-parallel
layers loading its state dict (all-to-all and all-gather). For each token count per rank it checks
the EP forward against the single-device one on the rank's own tokens, and times the dispatch +
combine alone (prepare, then finalize on the dispatched rows as the experts' output) against the
floor: NCCL's ``all_to_all_single`` moving the same rows there and back with the same splits,
measured in the same run. Rank 0 prints the table and writes the JSON."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

import moekit
from moekit.cli.presets import PRESETS
from moekit.ep.all_to_all_padded import PaddedAllToAllPrepareFinalize


def _median_ms(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _dispatch_combine(pf, x, w, ids):
    """One dispatch + combine through ``pf``, the dispatched rows standing in for the experts' output."""
    def step():
        prepared = pf.prepare(x, w, ids, False)
        pf.finalize(prepared.x, None, x.dtype, prepared)
    return step


def _graph_ms(step, iters: int, row: dict, name: str) -> float:
    """Median ms of ``step`` captured once and replayed; NaN (and the error in ``row``) if capture fails."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        return _median_ms(graph.replay, iters)
    except Exception as e:  # recorded, not fatal: the eager numbers stand
        row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
        return float("nan")


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def bench_preset(name: str, tokens: list[int], iters: int, device) -> list[dict]:
    preset = PRESETS[name]
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    single = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device)
    state = single.state_dict()
    layers = {}
    for comm, capacity in (("all-to-all", None), ("fixed", max(tokens)), ("all-gather", None)):
        parallel = moekit.ExpertParallel(communication="all-gather" if comm == "all-gather" else "all-to-all",
                                         timeout_s=120, max_tokens_per_rank=capacity)
        layers[comm] = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device, parallel=parallel)
        layers[comm].load_state_dict(state)
    rows = []
    for t in tokens:
        torch.manual_seed(1000 * t + rank)
        x = torch.randn(t, preset.hidden_size, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            want = single(x)
            row = {"preset": name, "tokens_per_rank": t, "world": world}
            for comm, layer in layers.items():
                got = layer(x)
                row[f"{comm}_rel_error"] = _rel(got, want)
                w, ids = layer.route(x)
                pf = layer.kernel.prepare_finalize
                if comm == "fixed":  # the capacity a server would set for this batch size
                    pf = PaddedAllToAllPrepareFinalize(layer.placement, layer._comm, device, capacity=t)

                step = _dispatch_combine(pf, x, w, ids)
                step()
                row[f"{comm}_ms"] = _median_ms(step, iters)
                if comm == "fixed":  # no host sync: the dispatch + combine replay as one CUDA graph
                    row["fixed_graph_ms"] = _graph_ms(step, iters, row, "fixed_graph")
                    step8 = _dispatch_combine(PaddedAllToAllPrepareFinalize(
                        layer.placement, layer._comm, device, capacity=t, fp8_dispatch=True), x, w, ids)
                    step8()
                    row["fixed_fp8_graph_ms"] = _graph_ms(step8, iters, row, "fixed_fp8_graph")
                if comm == "all-to-all":
                    prepared = pf.prepare(x, w, ids, False)
                    plan = prepared.plan
                    send = x[plan.send_rows].contiguous()
                    recv = torch.empty_like(prepared.x)
                    back = torch.empty_like(send)

                    def floor():
                        dist.all_to_all_single(recv, send, plan.recv_counts, plan.send_counts)
                        dist.all_to_all_single(back, recv, plan.send_counts, plan.recv_counts)
                    floor()
                    row["floor_ms"] = _median_ms(floor, iters)
                    row["rows_sent"] = plan.send_rows.numel()
                    row["bytes_each_way"] = send.numel() * send.element_size()
            row["explain"] = str(layers["all-to-all"].explain()).splitlines()[-3:]
        rows.append(row)
    return rows


def profile_overlap(name: str, tokens: int, device, out_dir: str) -> dict:
    """One profiled EP forward (fixed capacity) of a preset with shared experts: how long the shared
    experts' GPU span overlaps NCCL's dispatch kernels. Writes the Chrome trace of each rank."""
    from torch.profiler import ProfilerActivity, profile

    preset = PRESETS[name]
    rank = dist.get_rank()
    torch.manual_seed(0)
    layer = moekit.MoE(**preset.layer_kwargs(), dtype=torch.bfloat16, device=device,
                       parallel=moekit.ExpertParallel(max_tokens_per_rank=tokens))
    x = torch.randn(tokens, preset.hidden_size, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(3):
            layer(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                layer(x)
            torch.cuda.synchronize()
    path = os.path.join(out_dir, f"ep-trace-{name}-rank{rank}.json")
    prof.export_chrome_trace(path)
    events = json.load(open(path))["traceEvents"]
    spans = lambda pred: [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and pred(e)]  # noqa: E731
    shared = spans(lambda e: e.get("cat") == "gpu_user_annotation" and e["name"] == "moekit.shared_experts")
    nccl = spans(lambda e: e.get("cat") == "kernel" and "nccl" in e["name"].lower())
    overlap = sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in shared for b0, b1 in nccl)
    return {"preset": name, "tokens": tokens, "rank": rank, "shared_gpu_us": sum(b - a for a, b in shared),
            "nccl_us": sum(b - a for a, b in nccl), "overlap_us": overlap, "forwards": 5, "trace": path}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moekit.bench.ep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=list(PRESETS), help="repeatable (default deepseek-v3)")
    parser.add_argument("--tokens", default="1,64,1024,8192", help="tokens per rank, comma-separated")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", help="write every number to this file (rank 0)")
    parser.add_argument("--profile", metavar="DIR", help="also profile one preset's EP forward with shared experts "
                        "(DeepSeek-V3 has one) and report how long it overlaps the dispatch; traces go to DIR")
    args = parser.parse_args(argv)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    device = torch.device("cuda", local)
    results = []
    for name in args.preset or ["deepseek-v3"]:
        results += bench_preset(name, [int(t) for t in args.tokens.split(",")], args.iters, device)
        torch.cuda.empty_cache()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        overlap = profile_overlap("deepseek-v3", 256, device, args.profile)
        seen = [None] * dist.get_world_size()
        dist.all_gather_object(seen, overlap)
        if dist.get_rank() == 0:
            for o in seen:
                print(f"rank {o['rank']}: shared experts {o['shared_gpu_us']:.0f} us on the GPU over {o['forwards']} "
                      f"forwards, NCCL kernels {o['nccl_us']:.0f} us, overlapping {o['overlap_us']:.0f} us")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        print(f"{'preset':<16}{'tok/rank':>9}{'floor ms':>10}{'a2a ms':>9}{'x floor':>8}{'fixed ms':>9}"
              f"{'x floor':>8}{'ag ms':>9}{'x floor':>8}{'graph ms':>9}{'x floor':>8}{'fp8 graph':>10}{'x floor':>8}"
              "   max rel err: a2a / fixed / ag")
        for i, row in enumerate(results):
            errs = [r[i] for r in gathered]
            floor = max(r["floor_ms"] for r in errs)
            ms = {c: max(r[f"{c}_ms"] for r in errs) for c in ("all-to-all", "fixed", "all-gather")}
            err = {c: max(r[f"{c}_rel_error"] for r in errs) for c in ("all-to-all", "fixed", "all-gather")}
            print(f"{row['preset']:<16}{row['tokens_per_rank']:>9}{floor:>10.3f}"
                  + "".join(f"{ms[c]:>9.3f}{ms[c] / floor:>8.2f}" for c in ms)
                  + "".join(f"{max(r[k] for r in errs):>{wd}.3f}{max(r[k] for r in errs) / floor:>8.2f}"
                            for k, wd in (("fixed_graph_ms", 9), ("fixed_fp8_graph_ms", 10)))
                  + "   " + " / ".join(f"{err[c]:.2e}" for c in err))
        for row in results:
            for key in ("fixed_graph_error", "fixed_fp8_graph_error"):
                if key in row:
                    print("graph capture failed:", row[key])
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": gathered, "device": torch.cuda.get_device_name(),
                           "torch": torch.__version__}, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
