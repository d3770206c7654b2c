"""``moekit tune``: search the Triton experts kernels' tiles for a model's shape on this GPU, per
token-count bucket, and write the table the kernel loads (moekit/triton_ops/configs/ by default).
With ``--quant SCHEME`` the search runs on that scheme's quantized weights (moekit/tuning/
quant_tuner.py) and the table is keyed by the scheme."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from moekit.activations import GateUpLayout, parse_activation
from moekit.cli.bench import quant_schemes
from moekit.cli.common import DTYPES, CliError, progress_bar
from moekit.cli.presets import PRESETS
from moekit.quant import method_for


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="tune the Triton experts kernels' tiles for a shape on this GPU",
        description="Time tile candidates of the fused experts kernels per token-count bucket and write the best "
                    "as JSON keyed by device, shape, dtype and quant scheme; the kernel loads the nearest bucket.")
    add_shape_arguments(parser)
    parser.add_argument("--quant", action="append", default=None, metavar="SCHEME",
                        help="tune the forward on experts quantized to SCHEME (repeatable; aliases such as w4a16 "
                             "allowed); candidates are timed as whole forwards and checked against the reference")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, metavar="T",
                        help="token-count buckets (default 1 2 4 ... 16384)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write the tables (default: the package's config folder)")
    parser.add_argument("--fresh", action="store_true",
                        help="drop an existing table's other buckets (by default they stay: tuning a few buckets "
                             "adds to the table)")
    parser.add_argument("--compile-workers", type=int, default=8, help="threads compiling candidates ahead")
    parser.set_defaults(handler=tune_command)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset (repeatable) or --shape, and --dtype: what shapes_from_args reads."""
    parser.add_argument("--preset", action="append", choices=list(PRESETS), metavar="NAME",
                        help="model shape (repeatable); one of: " + ", ".join(PRESETS))
    parser.add_argument("--shape", metavar="E,K,H,I", help="explicit shape instead of a preset: experts, top_k, "
                        "hidden, intermediate (silu, concatenated gate/up, no bias)")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16", help="default bf16")


def tune_command(args: argparse.Namespace, console: Console) -> int:
    schemes = quant_schemes(args.quant) or ("none",)
    shapes = shapes_from_args(args)
    for name, shape in shapes:  # a scheme that cannot hold a shape is an argument error, found before any work
        for scheme in schemes:
            check_applicable(name, shape, scheme)
    if not torch.cuda.is_available():
        raise CliError("tune needs a CUDA GPU: tile configs are measured on the device they serve")
    from moekit.tuning.tuner import DEFAULT_BUCKETS

    buckets = tuple(args.tokens) if args.tokens else DEFAULT_BUCKETS
    device = torch.cuda.get_device_name()
    for name, shape in shapes:
        for scheme in schemes:
            _tune_one(name, shape, scheme, buckets, device, args, console)
    return 0


def _tune_one(name, shape, scheme: str, buckets, device: str, args, console: Console) -> None:
    from moekit.triton_ops.tile_configs import CONFIG_DIR, TableKey, write_table
    from moekit.tuning.quant_tuner import tune_quant_shape
    from moekit.tuning.tuner import tune_shape

    key = TableKey(device, shape.num_experts, shape.top_k, shape.hidden_size, shape.intermediate_size,
                   shape.dtype, shape.activation.gated, scheme)
    label = name if scheme == "none" else f"{name} {scheme}"

    def save(results):
        meta = {"device": device, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                "triton": _triton_version(), "source": name, "quant": scheme,
                "measured_us": {str(r.tokens): _measured(r) for r in results}}
        return write_table(key, {r.tokens: r.tiles for r in results}, meta, args.out_dir or CONFIG_DIR,
                           keep_other_buckets=not args.fresh)

    with progress_bar(console) as progress:
        task = progress.add_task(f"tuning {label}", total=len(buckets))

        def step(results):
            save(results)
            last = results[-1]
            us = last.forward_us if last.forward_us is not None else last.gemm1_us + last.gemm2_us
            progress.update(task, advance=1, description=f"{label}: {last.tokens} tokens, block_m "
                            f"{last.tiles.block_m}, {us:.1f} µs")

        if scheme == "none":
            results = tune_shape(shape, buckets, compile_workers=args.compile_workers, on_result=step)
        else:
            results = tune_quant_shape(shape, scheme, buckets, compile_workers=args.compile_workers, on_result=step)
    console.print(_table(label, results))
    console.print(f"wrote {save(results)}")


def _measured(r) -> dict:
    if r.forward_us is not None:  # quantized: whole forwards, checked against the reference
        return {"forward": round(r.forward_us, 2), **r.report}
    return {"gemm1": round(r.gemm1_us, 2), "gemm2": round(r.gemm2_us, 2), **r.report}


def check_applicable(name: str, shape, scheme: str) -> None:
    if scheme == "none":
        return
    rows = 2 * shape.intermediate_size if shape.activation.gated else shape.intermediate_size
    method = method_for(scheme)
    try:
        method.check_divisible("w13", rows, shape.hidden_size)
        method.check_divisible("w2", shape.hidden_size, shape.intermediate_size)
    except ValueError as e:
        raise CliError(f"--quant {scheme} cannot hold {name}: {e}") from None


def shapes_from_args(args):
    from moekit.tuning.tuner import TuneShape

    dtype = DTYPES[args.dtype]
    if args.shape:
        try:
            E, K, H, I = (int(v) for v in args.shape.split(","))
        except ValueError:
            raise CliError(f"--shape takes E,K,H,I (four integers), got {args.shape!r}") from None
        return [(f"E{E} k{K} H{H} I{I}", TuneShape(E, K, H, I, dtype, parse_activation("silu")))]
    if not args.preset:
        raise CliError("name a --preset (repeatable) or give --shape E,K,H,I")
    shapes = []
    for name in args.preset:
        p = PRESETS[name]
        shapes.append((name, TuneShape(p.num_experts, p.top_k, p.hidden_size, p.intermediate_size, dtype,
                                       parse_activation(p.activation), GateUpLayout(p.gate_up_layout), p.expert_bias,
                                       p.routing)))
    return shapes


def _table(name, results) -> Table:
    if results and results[0].forward_us is not None:
        return _quant_table(name, results)
    table = Table(title=f"{name}: best tiles per bucket", title_justify="left")
    for col in ("tokens", "block_m", "gemm1 n,k,warps,stages", "µs", "regs/spills", "gemm2 n,k,warps,stages",
                "µs", "regs/spills"):
        table.add_column(col, justify="right")
    for r in results:
        g1, g2 = r.tiles.gemm1, r.tiles.gemm2
        rep1, rep2 = r.report.get("gemm1", {}), r.report.get("gemm2", {})
        table.add_row(str(r.tokens), str(r.tiles.block_m), _tiles(g1), f"{r.gemm1_us:.1f}",
                      f"{rep1.get('n_regs')}/{rep1.get('n_spills')}", _tiles(g2), f"{r.gemm2_us:.1f}",
                      f"{rep2.get('n_regs')}/{rep2.get('n_spills')}")
    return table


def _quant_table(name, results) -> Table:
    table = Table(title=f"{name}: best tiles per bucket (whole forwards, checked against the reference)",
                  title_justify="left")
    for col in ("tokens", "block_m", "gemm1 n,k,warps,stages", "gemm2 n,k,warps,stages", "forward µs", "rel err",
                "rejected wrong/failed"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r.tokens), str(r.tiles.block_m), _tiles(r.tiles.gemm1), _tiles(r.tiles.gemm2),
                      f"{r.forward_us:.1f}", f"{r.report.get('rel_error', float('nan')):.2e}",
                      f"{r.report.get('rejected_wrong', 0)}/{r.report.get('rejected_failed', 0)}")
    return table


def _tiles(g) -> str:
    return f"{g.block_n},{g.block_k},{g.num_warps},{g.num_stages}" + (",tma" if g.tma else "")


def _triton_version() -> str:
    import triton

    return triton.__version__
