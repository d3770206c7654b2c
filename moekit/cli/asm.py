"""``moekit asm``: compile the Triton kernels that one experts forward would launch on a GPU, on any
machine (no GPU needed), and print what the compiler made of them: registers, stack (spills),
shared memory and the main loop's instructions (triton_ops/offline_compile.py). The tiles are the
ones a GPU of ``--device-name`` would load for that token count (its tuned table, else the default
heuristic)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moekit.cli.bench import quant_schemes
from moekit.cli.common import DTYPES, CliError, progress_bar
from moekit.cli.tune import add_shape_arguments, check_applicable, shapes_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "asm", help="compile the experts kernels for a GPU without one; show registers, spills, the K loop",
        description="Compile the Triton kernels one experts forward would launch (tiles as a GPU of --device-name "
                    "would load them) for sm_ARCH on this machine, GPU or not, and report registers, stack "
                    "(spills), shared memory and the main loop's SASS instruction mix.")
    add_shape_arguments(parser)
    parser.add_argument("--quant", action="append", default=None, metavar="SCHEME",
                        help="the experts quantized to SCHEME (repeatable; aliases such as w8a16 allowed)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 256, 4096], metavar="T",
                        help="token counts (default 1 256 4096)")
    parser.add_argument("--device-name", default="NVIDIA H200",
                        help="whose tuned tile tables to use (default 'NVIDIA H200')")
    parser.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90)")
    parser.add_argument("--dump", type=Path, default=None, metavar="DIR",
                        help="also write each kernel's TTGIR, PTX and SASS into DIR")
    parser.set_defaults(handler=asm_command)


def asm_command(args: argparse.Namespace, console: Console) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":  # moekit's kernels were then defined for the interpreter
        raise CliError("asm compiles kernels: run it without TRITON_INTERPRET=1")
    from moekit.triton_ops.tile_configs import TableKey

    schemes = quant_schemes(args.quant) or ("none",)
    shapes = shapes_from_args(args)
    for name, shape in shapes:
        for scheme in schemes:
            check_applicable(name, shape, scheme)
    for name, shape in shapes:
        for scheme in schemes:
            key = TableKey(args.device_name, shape.num_experts, shape.top_k, shape.hidden_size,
                           shape.intermediate_size, DTYPES[args.dtype], shape.activation.gated, scheme)
            for tokens in args.tokens:
                label = f"{name}{'' if scheme == 'none' else ' ' + scheme}, {tokens} token{'' if tokens == 1 else 's'}"
                _show_forward(label, shape, scheme, key, tokens, args, console)
    return 0


def _show_forward(label: str, shape, scheme: str, key, tokens: int, args: argparse.Namespace,
                  console: Console) -> None:
    """Compile one forward's launches and print their table, then their main loops' mix."""
    from moekit.triton_ops.offline_compile import compile_launch, forward_launches, report, sass_text
    from moekit.triton_ops.tile_configs import describe_tiles, tiles_for

    tiles, source = tiles_for(key, tokens)
    launches = forward_launches(shape, scheme, tokens, tiles)
    table = Table(title=f"{label}: {describe_tiles(tiles)} ({source}), sm_{args.arch}", title_justify="left")
    for column in ("kernel", "grid", "warps×stages", "regs", "stack B", "shared KiB", "loop instr."):
        table.add_column(column, justify="left" if column == "kernel" else "right", no_wrap=True)
    mixes = []
    with progress_bar(console) as progress:
        task = progress.add_task(f"compiling {label}", total=len(launches))
        for launch in launches:
            compiled = compile_launch(launch, args.arch)
            r = report(launch, compiled)
            if args.dump:
                _dump(args.dump, label, r.name, compiled, sass_text(compiled))
            name, loop = r.name.lstrip("_"), sum(r.loop_instructions.values())
            cells = ("×".join(map(str, launch.grid)), f"{launch.num_warps}×{launch.num_stages}", str(r.registers),
                     str(r.stack_bytes), f"{r.shared_bytes / 1024:g}", str(loop) if loop else "-")
            table.add_row(name, *cells)
            if loop:
                mixes.append(f"  {name}: {r.loop_mix(12)} (TTGIR: {r.layout_conversions} layout conversions, "
                             f"{r.shared_stores} stores to shared memory)")
            if r.wgmma_serialized:
                mixes.append(f"  {name}: ptxas serialized its wgmmas: {r.wgmma_serialized}")
            if r.wgmma_hazards:
                mixes.append(f"  {name}: {r.wgmma_hazards} instructions write the A registers of an unfinished "
                             f"wgmma (wrong results: triton_ops/wgmma_checks.py)")
            progress.advance(task)
    console.print(table)
    console.print("main loop per iteration (SASS):", *mixes, sep="\n", soft_wrap=True)


def _dump(folder: Path, label: str, kernel: str, compiled, sass: str) -> None:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{label} {kernel}")
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("ttgir", "ptx"):
        (folder / f"{stem}.{kind}").write_text(compiled.asm[kind])
    (folder / f"{stem}.sass").write_text(sass)
