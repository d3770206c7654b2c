"""Host time of one layer forward at decode sizes, on a GPU machine:

    python -m moekit.bench.host --preset qwen3-30b-a3b --tokens 1,8 --json host.json

For each preset and token count: the median wall time of the ``layer(x)`` call itself (the GPU idle
when it starts: a sync after every call), eagerly with the host checks on and off, and replayed from
a decode graph (``MoE.use_decode_graphs``); and the GPU time of one forward for comparison. The
issue's goal is <= 60 µs of host time per layer forward at 1 token."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import moekit
from moekit.cli.presets import PRESETS


def host_us(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def gpu_us(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def measure(name: str, tokens: int, iters: int) -> dict:
    torch.manual_seed(0)
    layer = moekit.MoE(**PRESETS[name].layer_kwargs(), dtype=torch.bfloat16, device="cuda")
    x = torch.randn(tokens, layer.hidden_size, device="cuda", dtype=torch.bfloat16)
    row = {"preset": name, "tokens": tokens}
    with torch.no_grad():
        eager = layer(x)
        for checks in (True, False):
            moekit.set_host_checks(checks)
            layer(x)
            row[f"eager_checks_{'on' if checks else 'off'}_us"] = host_us(lambda: layer(x), iters)
        moekit.set_host_checks(None)
        layer.use_decode_graphs(max(tokens, 1))
        graphed = layer(x)
        row["graph_us"] = host_us(lambda: layer(x), iters)
        row["graph_equals_eager"] = bool(torch.equal(graphed, eager))
        row["gpu_us_graph"] = gpu_us(lambda: layer(x), iters)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moekit.bench.host", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=list(PRESETS), help="repeatable (default qwen3-30b-a3b)")
    parser.add_argument("--tokens", default="1", help="comma-separated")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("moekit.bench.host measures host time on a GPU machine: no CUDA device here")
        return 1
    rows = [measure(name, int(t), args.iters) for name in args.preset or ["qwen3-30b-a3b"]
            for t in args.tokens.split(",")]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; median host µs per layer(x) call")
    print(f"{'preset':<16}{'tokens':>7}{'eager, checks on':>18}{'eager, checks off':>19}{'decode graph':>14}"
          f"{'GPU µs':>9}  graph == eager")
    for r in rows:
        print(f"{r['preset']:<16}{r['tokens']:>7}{r['eager_checks_on_us']:>18.1f}{r['eager_checks_off_us']:>19.1f}"
              f"{r['graph_us']:>14.1f}{r['gpu_us_graph']:>9.1f}  {r['graph_equals_eager']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
