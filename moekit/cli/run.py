"""``moekit run``: build a preset's layer, time its forward pass, and check its output against the
float64 spec (routing by the layer itself, routed and shared experts in float64)."""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

import moekit
from moekit.quant.dequant import dequantize
from moekit.tolerance import ACT_QUANT_REL_TOL, REL_TOL, relative_error
from moekit.cli.common import add_layer_arguments, build_and_show, dtype_name, progress_bar

DEFAULT_TOKENS = {"cpu": 256, "cuda": 1024}
_CHECK_CHUNKS = 16  # pieces the fp64 check is cut into, for the progress bar


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="time a model's MoE layer and check it against the float64 spec",
        description="Build the preset's moekit.MoE with random weights, time its forward pass (median over "
                    "--iters after a warmup) and compare its output with the float64 spec. Exit code 1 if the "
                    "check fails.")
    add_layer_arguments(parser)
    parser.add_argument("--tokens", type=_positive_int, default=None,
                        help=f"tokens per forward pass (default {DEFAULT_TOKENS['cpu']} on cpu, "
                             f"{DEFAULT_TOKENS['cuda']} on cuda)")
    parser.add_argument("--iters", type=_positive_int, default=20, help="timed forward passes (default 20)")
    parser.add_argument("--skip-check", action="store_true", help="time only; no float64 check")
    parser.set_defaults(handler=run_command)


@dataclass(frozen=True)
class Check:
    rel_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.rel_error <= self.tolerance  # False for NaN


def run_command(args: argparse.Namespace, console: Console) -> int:
    setup, layer = build_and_show(args, console)
    tokens = args.tokens or DEFAULT_TOKENS[setup.device.type]
    x = torch.randn(tokens, setup.built.hidden_size, dtype=setup.dtype, device=setup.device)
    times, out = time_forward(layer, x, args.iters, console)
    check = None if args.skip_check else check_against_spec(layer, x, out, console)
    console.print(results_table(layer, tokens, times, check, args.seed))
    if check is not None and not check.passed:
        console.print(Text(f"FAIL: relative error {check.rel_error:.3g} > {check.tolerance:g}", style="bold red"))
        return 1
    return 0


def time_forward(layer: moekit.MoE, x: torch.Tensor, iters: int, console: Console) -> tuple[list[float], torch.Tensor]:
    """Seconds per forward pass after a warmup, each pass synchronized on the GPU; and one output."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    warmup = min(3, iters)
    times = []
    with torch.inference_mode(), progress_bar(console) as progress:
        task = progress.add_task("timing forward", total=warmup + iters)
        for _ in range(warmup):
            out = layer(x)
            progress.advance(task)
        sync()
        for _ in range(iters):
            start = time.perf_counter()
            layer(x)
            sync()
            times.append(time.perf_counter() - start)
            progress.advance(task)
    return times, out


def check_against_spec(layer: moekit.MoE, x: torch.Tensor, out: torch.Tensor, console: Console) -> Check:
    ref = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    chunk = max(1, -(-x.shape[0] // _CHECK_CHUNKS))
    with torch.inference_mode(), progress_bar(console) as progress:
        weights, ids = layer.route(x)
        shared64 = copy.deepcopy(layer.shared_experts).double() if layer.shared_experts is not None else None
        task = progress.add_task("float64 check", total=x.shape[0])
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            ref[rows] = _spec(layer, x[rows], weights[rows], ids[rows], shared64)
            progress.advance(task, ref[rows].shape[0])
    rel = relative_error(out, ref)
    return Check(rel_error=rel, tolerance=tolerance_of(layer))


def tolerance_of(layer: moekit.MoE) -> float:
    """The dtype's bound; a w8a8 scheme's activation quantization error (the spec keeps activations exact)."""
    spec = layer.quant_method.spec if layer.quant_method is not None else None
    if spec is not None and not spec.weight_only:
        return ACT_QUANT_REL_TOL[spec.act.value]
    return REL_TOL[layer.dtype]


def _spec(layer: moekit.MoE, x, weights, ids, shared64) -> torch.Tensor:
    w13, w2 = _float_experts(layer)
    ref = moekit.fused_moe_spec(x, w13, w2, weights, ids, layer.activation, layer.w13_bias, layer.w2_bias,
                                gate_up_layout=layer.gate_up_layout,
                                apply_router_weight_on_input=layer.apply_router_weight_on_input)
    return ref if shared64 is None else ref + shared64(x.double())


def _float_experts(layer: moekit.MoE):
    """The expert weights as the spec reads them: a quantized layer's dequantized (float32)."""
    if layer.quant_method is None:
        return layer.w13, layer.w2
    spec = layer.quant_method.spec
    return dequantize(layer._quantized("w13"), spec), dequantize(layer._quantized("w2"), spec)


def results_table(layer: moekit.MoE, tokens: int, times: list[float], check: Check | None, seed: int) -> Table:
    median = statistics.median(times)
    explanation = layer.explain()
    table = Table(title="moekit run", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("backend", explanation.backend),
        ("kernel", explanation.kernel),
        ("tokens", str(tokens)),
        ("dtype", dtype_name(layer.dtype)),
        ("quant", layer.quant),
        (f"time (median of {len(times)})", f"{median * 1e6:,.1f} µs"),
        ("time (min)", f"{min(times) * 1e6:,.1f} µs"),
        ("tokens/s", f"{tokens / median:,.0f}"),
        ("seed", str(seed)),
    ]
    for name, value in rows:
        table.add_row(name, Text(value))
    if check is None:
        table.add_row("check", Text("skipped", style="yellow"))
    else:
        table.add_row("rel. error vs fp64 spec", Text(f"{check.rel_error:.3g}"))
        table.add_row("tolerance", Text(f"{check.tolerance:g}"))
        table.add_row("check", Text("PASS", style="bold green") if check.passed else Text("FAIL", style="bold red"))
    return table


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


__all__ = ["add_parser", "check_against_spec", "run_command", "time_forward"]
