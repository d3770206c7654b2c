"""What the commands share: the layer options, the device and dtype defaults, the shape actually
built (scaled down on the CPU), and building the preset's ``moekit.MoE``."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import moekit
import moekit.quant
from moekit.cli.presets import DEFAULT_PRESET, PRESETS, Preset, Scaling, describe_routing, scale_down
from moekit.experts import ALL_BACKENDS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CliError(Exception):
    """A user error the CLI reports in one line with exit code 2."""


def make_console(stderr: bool = False) -> Console:
    # Error lines stay whole (soft wrap) so they can be grepped.
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr)


def progress_bar(console: Console) -> Progress:
    """The commands' progress bar; off (no output) when the console is not a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(PRESETS)
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET, metavar="NAME",
                        help=f"model shape (default {DEFAULT_PRESET}); one of: {names}")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="activation and weight dtype (default bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where to run (default cuda if available, else cpu)")
    parser.add_argument("--backend", choices=[b.name for b in ALL_BACKENDS], default=None, metavar="NAME",
                        help="experts backend to require (default: the oracle's choice; MOEKIT_BACKEND also "
                             f"sets it); one of: {', '.join(b.name for b in ALL_BACKENDS)}")
    parser.add_argument("--quant", default=None, metavar="SCHEME",
                        help="quantize the random expert weights with this scheme (e.g. fp8-block128, w4a16, "
                             "mxfp4, nvfp4; default: unquantized); see docs/quantization.md")
    parser.add_argument("--full-size", action="store_true",
                        help="build the model's real shape on the CPU too (default there: scaled down)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")


@dataclass(frozen=True)
class Setup:
    """The layer a command builds: the model's shape, the shape built, and where."""

    model: Preset  # the model's real shape
    built: Preset  # the shape built: ``model``, or its scaled-down version
    scaling: Scaling | None  # None at full size
    dtype: torch.dtype
    device: torch.device
    quant: str = "none"


def resolve_setup(args: argparse.Namespace) -> Setup:
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = PRESETS[args.preset]
    try:
        quant = moekit.quant.parse_quant(getattr(args, "quant", None))
    except ValueError as e:
        raise CliError(f"--quant: {e}") from None
    if device.type == "cpu" and not args.full_size:
        built, scaling = scale_down(model)
        return Setup(model, _fit_groups(built, quant), scaling, dtype, device, quant)
    return Setup(model, model, None, dtype, device, quant)


def _fit_groups(built: Preset, quant: str) -> Preset:
    """A scaled-down shape rounded up so the scheme's K groups divide it (the real shapes divide)."""
    if quant == "none":
        return built
    group = max(moekit.quant.method_for(quant).spec.group_k, 2)
    up = lambda n: -(-n // group) * group  # noqa: E731
    return dataclasses.replace(built, hidden_size=up(built.hidden_size), intermediate_size=up(built.intermediate_size))


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "is a CPU build" if torch.version.cuda is None else f"(CUDA {torch.version.cuda}) sees no CUDA device"
        raise CliError(f"--device cuda: this torch {torch.__version__} {why}; use --device cpu")
    return torch.device(name)


def build_layer(setup: Setup, backend: str | None, seed: int) -> moekit.MoE:
    torch.manual_seed(seed)
    try:
        layer = moekit.MoE(**setup.built.layer_kwargs(), dtype=setup.dtype, device=setup.device, backend=backend,
                           quant=None if setup.quant == "none" else setup.quant)
    except (moekit.BackendUnavailableError, ValueError) as e:  # ValueError: a group size that does not divide
        raise CliError(str(e)) from None
    if layer.correction_bias is not None:
        # A trained model's bias is far from zero; a random one makes selection differ from the scores'.
        layer.correction_bias.normal_(0.0, 0.1)
    return layer


def shape_table(setup: Setup) -> Table:
    """The model's shape beside the shape built, row per field."""
    model, built = setup.model, setup.built
    title = f"{model.model} MoE layer ({model.name})"
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("model", justify="right")
    table.add_column("built" + (" (scaled)" if setup.scaling else ""), justify="right")
    rows = [
        ("experts", model.num_experts, built.num_experts),
        ("top_k", model.top_k, built.top_k),
        ("hidden", model.hidden_size, built.hidden_size),
        ("expert intermediate", model.intermediate_size, built.intermediate_size),
        ("shared intermediate", model.shared_intermediate_size or "-", built.shared_intermediate_size or "-"),
    ]
    for name, full, run in rows:
        table.add_row(name, Text(str(full)), Text(str(run), style="bold" if full != run else ""))
    table.add_row("activation", Text(model.activation), Text(built.activation))
    table.add_row("routing", Text(describe_routing(model.routing)), Text(describe_routing(built.routing)))
    table.add_row("checkpoint quant", Text(model.checkpoint_quant or "none"),
                  Text("none (unquantized)" if setup.quant == "none" else setup.quant))
    table.add_row("dtype / device", "", Text(f"{dtype_name(setup.dtype)} / {setup.device.type}"))
    return table


def scaling_note(setup: Setup) -> Text | None:
    if setup.scaling is None:
        return None
    return Text(f"Scaled down for a CPU run ({setup.scaling.describe()}; top_k, routing and activation kept). "
                "--full-size builds the real shape.", style="yellow")


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}.get(
        dtype, str(dtype).removeprefix("torch."))


def build_and_show(args: argparse.Namespace, console: Console) -> tuple[Setup, moekit.MoE]:
    """Resolve the preset, build its layer and print the shape run (and how it was scaled)."""
    setup = resolve_setup(args)
    layer = build_layer(setup, args.backend, args.seed)
    console.print(shape_table(setup))
    if (note := scaling_note(setup)) is not None:
        console.print(note)
    return setup, layer
