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

import torch
import torch.distributed as dist

import moekit
from moekit.cli.presets import PRESETS
from moekit.bench.ep_profile import profile_overlap
from moekit.bench.ep_timing import graph_ms, median_ms
from moekit.ep.all_to_all_padded import PaddedAllToAllPrepareFinalize


def _dispatch_combine(pf, x, w, ids):
    """One dispatch + combine through ``pf``. The experts' output is a stand-in: a contiguous buffer
    with as many rows as were dispatched (the received rows themselves may be a strided view, which
    the experts read in place but finalize would copy)."""
    standin = torch.randn(pf.comm.world_size * x.shape[0], x.shape[1], device=x.device, dtype=x.dtype)

    def step():
        prepared = pf.prepare(x, w, ids, False)
        pf.finalize(standin[: prepared.x.shape[0]], None, x.dtype, prepared)
    return step


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
                row[f"{comm}_ms"] = median_ms(step, iters)
                if comm == "fixed":  # no host sync: the dispatch + combine replay as one CUDA graph
                    row["fixed_graph_ms"] = graph_ms(step, iters, row, "fixed_graph")
                    two = _dispatch_combine(PaddedAllToAllPrepareFinalize(
                        layer.placement, layer._comm, device, capacity=t, pack_rows=False), x, w, ids)
                    two()
                    row["fixed_unpacked_graph_ms"] = graph_ms(two, iters, row, "fixed_unpacked_graph")
                    step8 = _dispatch_combine(PaddedAllToAllPrepareFinalize(
                        layer.placement, layer._comm, device, capacity=t, fp8_dispatch=True), x, w, ids)
                    step8()
                    row["fixed_fp8_graph_ms"] = graph_ms(step8, iters, row, "fixed_fp8_graph")
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
                    row["floor_ms"] = median_ms(floor, iters)
                    row["floor_graph_ms"] = graph_ms(floor, iters, row, "floor_graph")
                    row["rows_sent"] = plan.send_rows.numel()
                    row["bytes_each_way"] = send.numel() * send.element_size()
            row["explain"] = str(layers["all-to-all"].explain()).splitlines()[-3:]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moekit.bench.ep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=list(PRESETS), help="repeatable (default deepseek-v3)")
    parser.add_argument("--tokens", default="1,64,1024,8192", help="tokens per rank, comma-separated")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", help="write every number to this file (rank 0)")
    parser.add_argument("--profile-tokens", default="256",
                        help="tokens per rank of the profiled forwards, comma-separated")
    parser.add_argument("--profile", metavar="DIR", help="also profile one preset's EP forward with shared experts "
                        "(DeepSeek-V3 has one) and report how long it overlaps the dispatch; traces go to DIR")
    args = parser.parse_args(argv)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    device = torch.device("cuda", local)
    results = []
    tokens = [int(t) for t in args.tokens.split(",") if t]
    for name in (args.preset or ["deepseek-v3"]) if tokens else []:  # --tokens "": profile only
        results += bench_preset(name, tokens, args.iters, device)
        torch.cuda.empty_cache()
    profiles = []
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        for t in (int(t) for t in args.profile_tokens.split(",")):
            profiles.append(profile_overlap("deepseek-v3", t, device, args.profile))
            torch.cuda.empty_cache()
        seen = [None] * dist.get_world_size()
        dist.all_gather_object(seen, profiles)
        if dist.get_rank() == 0:
            profiles = [o for rank in seen for o in rank]
            for o in profiles:
                saved = o["no_shared_graph_ms"] + o["shared_alone_graph_ms"] - o["forward_graph_ms"]
                print(f"{o['tokens']} tokens/rank, rank {o['rank']}: forward {o['forward_ms']:.3f} ms eager "
                      f"({o['forward_decode_graphs_ms']:.3f} with use_decode_graphs), "
                      f"{o['forward_graph_ms']:.3f} ms graph replay ({o['no_shared_graph_ms']:.3f} without shared "
                      f"experts, shared alone {o['shared_alone_graph_ms']:.3f}: overlap saves {saved:.3f} ms); over "
                      f"{o['replays']} replays NCCL ran {o['nccl_us']:.0f} us, {o['nccl_beside_compute_us']:.0f} us of "
                      "it beside other kernels")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        print("eager: host-launched, each against NCCL's two all_to_all_single calls launched the same way; "
              "graph: replayed from a CUDA graph, against those two calls replayed from one")
        eager_cols = ("all-to-all", "fixed", "all-gather")
        graph_cols = ("fixed_graph", "fixed_unpacked_graph", "fixed_fp8_graph")
        print(f"{'preset':<16}{'tok/rank':>9}{'floor ms':>9}"
              + "".join(f"{c + ' ms':>15}{'x':>6}" for c in eager_cols) + f"{'floor graph':>13}"
              + "".join(f"{c.replace('fixed_', '') + ' ms':>19}{'x':>6}" for c in graph_cols)
              + "   max rel err: a2a / fixed / ag")
        for i, row in enumerate(results):
            ranks = [r[i] for r in gathered]
            worst = lambda key: max(r.get(key, float("nan")) for r in ranks)  # noqa: E731
            floor, floor_graph = worst("floor_ms"), worst("floor_graph_ms")
            print(f"{row['preset']:<16}{row['tokens_per_rank']:>9}{floor:>9.3f}"
                  + "".join(f"{worst(c + '_ms'):>15.3f}{worst(c + '_ms') / floor:>6.2f}" for c in eager_cols)
                  + f"{floor_graph:>13.3f}"
                  + "".join(f"{worst(c + '_ms'):>19.3f}{worst(c + '_ms') / floor_graph:>6.2f}" for c in graph_cols)
                  + "   " + " / ".join(f"{worst(c + '_rel_error'):.2e}" for c in eager_cols))
        for row in results:
            for key in [k for k in row if k.endswith("_error") and not k.endswith("rel_error")]:
                print("graph capture failed:", key, row[key])
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": gathered, "profiles": profiles, "device": torch.cuda.get_device_name(),
                           "torch": torch.__version__}, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
