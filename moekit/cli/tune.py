"""``moekit tune``: search the Triton experts kernels' tiles for a model's shape on this GPU, per
token-count bucket, and write the table the kernel loads (moekit/triton_ops/configs/ by default)."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from moekit.activations import GateUpLayout, parse_activation
from moekit.cli.common import DTYPES, CliError, progress_bar
from moekit.cli.presets import PRESETS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="tune the Triton experts kernels' tiles for a shape on this GPU",
        description="Time tile candidates of the fused experts kernels per token-count bucket and write the best "
                    "as JSON keyed by device, shape and dtype; the kernel loads the nearest bucket.")
    parser.add_argument("--preset", action="append", choices=list(PRESETS), metavar="NAME",
                        help="model shape (repeatable); one of: " + ", ".join(PRESETS))
    parser.add_argument("--shape", metavar="E,K,H,I", help="explicit shape instead of a preset: experts, top_k, "
                        "hidden, intermediate (silu, concatenated gate/up, no bias)")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16", help="default bf16")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, metavar="T",
                        help="token-count buckets (default 1 2 4 ... 16384)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write the tables (default: the package's config folder)")
    parser.add_argument("--compile-workers", type=int, default=8, help="threads compiling candidates ahead")
    parser.set_defaults(handler=tune_command)


def tune_command(args: argparse.Namespace, console: Console) -> int:
    if not torch.cuda.is_available():
        raise CliError("tune needs a CUDA GPU: tile configs are measured on the device they serve")
    from moekit.triton_ops.tile_configs import CONFIG_DIR, TableKey, write_table
    from moekit.tuning.tuner import DEFAULT_BUCKETS, tune_shape

    shapes = _shapes(args)
    buckets = tuple(args.tokens) if args.tokens else DEFAULT_BUCKETS
    device = torch.cuda.get_device_name()
    for name, shape in shapes:
        key = TableKey(device, shape.num_experts, shape.top_k, shape.hidden_size, shape.intermediate_size,
                       shape.dtype, shape.activation.gated)

        def save(results, name=name, key=key):
            meta = {"device": device, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                    "triton": _triton_version(), "source": name,
                    "measured_us": {str(r.tokens): {"gemm1": round(r.gemm1_us, 2), "gemm2": round(r.gemm2_us, 2),
                                                    **r.report} for r in results}}
            return write_table(key, {r.tokens: r.tiles for r in results}, meta, args.out_dir or CONFIG_DIR)

        with progress_bar(console) as progress:
            task = progress.add_task(f"tuning {name}", total=len(buckets))

            def step(results, name=name, task=task, save=save):
                save(results)
                last = results[-1]
                progress.update(task, advance=1, description=f"{name}: {last.tokens} tokens, block_m "
                                f"{last.tiles.block_m}, {last.gemm1_us + last.gemm2_us:.1f} µs")

            results = tune_shape(shape, buckets, compile_workers=args.compile_workers, on_result=step)
        console.print(_table(name, results))
        console.print(f"wrote {save(results)}")
    return 0


def _shapes(args):
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


def _tiles(g) -> str:
    return f"{g.block_n},{g.block_k},{g.num_warps},{g.num_stages}" + (",tma" if g.tma else "")


def _triton_version() -> str:
    import triton

    return triton.__version__
