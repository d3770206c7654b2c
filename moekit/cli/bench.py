"""``moekit bench``: per model shape and token count, the median µs of moekit's forward (CUDA-graph
replay, without and with routing), of a grouped-GEMM MoE and of the transformers-style eager loop,
against the roofline floor of that cell and checked against a float32 reference. With ``--quant``,
each scheme's quantized forward beside the unquantized one (baselines off unless ``--baselines``).
CUDA only."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from moekit.bench.plot import plot_results
from moekit.bench.report import render, write_json
from moekit.bench.runner import BenchConfig, run_bench
from moekit.cli.common import DTYPES, CliError, progress_bar
from moekit.cli.presets import PRESETS
from moekit.quant import parse_quant

DEFAULT_PRESETS = ("mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "gpt-oss-120b")
DEFAULT_TOKENS = (1, 8, 64, 256, 1024, 4096, 16384)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time moekit against a grouped-GEMM MoE and an eager loop, with the roofline floor (GPU)",
        description="For each preset and token count: median µs of moekit.fused_moe on precomputed routing "
                    "(CUDA-graph replay), of the moekit.MoE forward with its routing (graph replay), of "
                    "moekit.fused_moe(backend='torch-grouped-mm') and of a transformers-style eager loop over "
                    "experts (both eager), all on the layer's own weights and rotated inputs, timed with "
                    "triton.testing.do_bench; the roofline floor from the bandwidth and matmul rate measured at "
                    "the start of the run; and moekit's error against a float32 reference. Shared experts are "
                    "left out. Exit code 1 if a moekit output fails its check.")
    names = ", ".join(PRESETS)
    parser.add_argument("--preset", action="append", choices=list(PRESETS), default=None, metavar="NAME",
                        help=f"a model shape; repeat for several (default: {', '.join(DEFAULT_PRESETS)}); one of: "
                             f"{names}")
    default_tokens = ",".join(map(str, DEFAULT_TOKENS))
    parser.add_argument("--tokens", nargs="+", type=_token_list, default=None, metavar="N",
                        help=f"token counts, space- or comma-separated (default {default_tokens})")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16",
                        help="weights and activations (default bf16)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write every number to FILE as JSON")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                        help="also draw µs and %% of floor against tokens per shape into a PNG (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    parser.add_argument("--quant", action="append", default=None, metavar="SCHEME",
                        help="also bench the forward with the experts quantized to SCHEME (repeatable; aliases such "
                             "as w4a16, w8a16, fp8 allowed), from the same float weights, against its floor from the "
                             "packed bytes read; see docs/cli.md")
    parser.add_argument("--baselines", action="store_true",
                        help="with --quant, also time moekit+routing, grouped_mm and the hf loop (default: only the "
                             "unquantized and quantized moekit forwards)")
    parser.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace, console: Console) -> int:
    schemes = quant_schemes(args.quant)  # a typo is reported before anything else is checked
    device = _require_gpu()
    _require_module("triton", "to time with triton.testing.do_bench", "pip install triton")
    if args.plot is not None:
        _require_module("matplotlib", "for --plot", "pip install 'moekit[bench]'")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not path.parent.is_dir():
            raise CliError(f"{option} {path}: directory {path.parent} does not exist")

    presets = tuple(PRESETS[name] for name in dict.fromkeys(args.preset or DEFAULT_PRESETS))
    tokens = tuple(sorted({t for group in (args.tokens or [DEFAULT_TOKENS]) for t in group}))
    config = BenchConfig(presets=presets, tokens=tokens, dtype=DTYPES[args.dtype], seed=args.seed,
                         command=_command_line(presets, tokens, schemes, args), quant=schemes,
                         baselines=args.baselines or not schemes)
    with progress_bar(console) as bar:
        results = run_bench(config, device, _ProgressBar(bar, config.cells, console))
    render(results, console)
    if args.json is not None:
        write_json(results, args.json)
        console.print(Text(f"wrote {args.json}"))
    if args.plot is not None:
        plot_results(results, args.plot)
        console.print(Text(f"wrote {args.plot}"))
    if not results.passed:
        console.print(Text("FAIL: a moekit output failed its check or did not run (see the notes above)",
                           style="bold red"))
        return 1
    return 0


def quant_schemes(names: list[str] | None) -> tuple[str, ...]:
    """``--quant`` values as canonical scheme names, in order, without repeats (w4a16 -> w4a16-g128)."""
    schemes = []
    for name in names or ():
        try:
            scheme = parse_quant(name)
        except ValueError as e:
            raise CliError(f"--quant: {e}") from None
        if scheme == "none":
            raise CliError("--quant: 'none' is the unquantized forward, which every run times; name a scheme")
        schemes.append(scheme)
    return tuple(dict.fromkeys(schemes))


def _command_line(presets, tokens, schemes, args: argparse.Namespace) -> str:
    """The run's command with every default spelled out, to record beside its results."""
    words = ["moekit", "bench", *(f"--preset {p.name}" for p in presets), f"--tokens {','.join(map(str, tokens))}",
             f"--dtype {args.dtype}", f"--seed {args.seed}", *(f"--quant {s}" for s in schemes)]
    if schemes and args.baselines:
        words.append("--baselines")
    return " ".join(words)


def _require_gpu() -> torch.device:
    if not torch.cuda.is_available():
        why = "is a CPU build" if torch.version.cuda is None else f"(CUDA {torch.version.cuda}) sees no CUDA device"
        raise CliError(f"needs a CUDA GPU: this torch {torch.__version__} {why}")
    return torch.device("cuda", torch.cuda.current_device())


def _require_module(name: str, why: str, install: str) -> None:
    # Checked before the run starts, not after ten minutes of it.
    if importlib.util.find_spec(name) is None:
        raise CliError(f"needs {name} {why}: {install}")


class _ProgressBar:
    """The runner's progress hooks on a rich bar; without a terminal, one line per cell instead."""

    def __init__(self, bar: Progress, cells: int, console: Console):
        self.bar, self.console = bar, console
        self.task = bar.add_task("starting", total=cells)

    def status(self, text: str) -> None:
        self.bar.update(self.task, description=text)

    def cell_done(self, shape, cell) -> None:
        self.bar.advance(self.task)
        if not self.console.is_terminal:
            self.console.print(Text(_cell_line(shape, cell)))

    def quant_cell_done(self, shape, scheme, tokens, cell) -> None:
        self.bar.advance(self.task)
        if not self.console.is_terminal:
            self.console.print(Text(_quant_cell_line(shape, scheme, tokens, cell)))


def _cell_line(shape, cell) -> str:
    if cell is None:
        return f"{shape.preset}: skipped ({shape.error})"
    if cell.error is not None:
        return f"{shape.preset} T={cell.tokens}: error: {cell.error}"
    v = cell.variants.get("moekit")
    timing = "no time" if v is None or v.us is None else f"{v.us:,.1f} µs ({v.mode})"
    pct = cell.pct_of_floor("moekit")
    return (f"{shape.preset} T={cell.tokens}: moekit {timing}"
            + (f", {pct:.0f}% of floor" if pct is not None else "")
            + f", check {'PASS' if cell.passed else 'FAIL'}")


def _quant_cell_line(shape, scheme: str, tokens: int, cell) -> str:
    head = f"{shape.preset} T={tokens} {scheme}"
    if cell is None:
        why = shape.error or shape.quant_skipped.get(scheme) or shape.quant_errors.get(scheme)
        return f"{head}: skipped ({why})"
    if cell.error is not None:
        return f"{head}: error: {cell.error}"
    v = cell.result
    timing = "no time" if v is None or v.us is None else f"{v.us:,.1f} µs ({v.mode})"
    pct = cell.pct_of_floor
    return (f"{head} [{shape.quant_backends.get(scheme)}]: {timing}" + (f", {pct:.0f}% of floor" if pct else "")
            + f", check {'PASS' if cell.passed else 'FAIL'}")


def _token_list(text: str) -> list[int]:
    values = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected positive integers, got {value}")
        values.append(value)
    return values


__all__ = ["add_parser", "bench_command", "quant_schemes"]
