"""``moekit info``: software versions, devices, and every experts backend with its declared
capabilities and whether this machine can run it."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

import moekit
from moekit.bench.provenance import source_digest
from moekit.experts import ALL_BACKENDS
from moekit.experts.base import ExpertsBackend
from moekit.cli.common import dtype_name
from moekit.hardware import Environment, current_environment

_PACKAGES = ("torch", "triton", "transformers", "compressed-tensors", "rich", "numpy")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="versions, devices, and the experts backends this machine can run",
                                   description="Print software versions, devices, every experts backend with its "
                                               "declared capabilities and availability here, and MOEKIT_BACKEND.")
    parser.set_defaults(handler=info_command)


def info_command(args: argparse.Namespace, console: Console) -> int:
    env = current_environment()
    console.print(versions_table())
    console.print(devices_table())
    console.print(Text("Experts backends, each with the capabilities it declares (the oracle of each quant "
                       "scheme lists its candidates in priority order):"))
    for table in backend_tables(env):
        console.print(table)
    requested = env.requested_backend
    console.print(Text(f"MOEKIT_BACKEND={requested}" if requested else "MOEKIT_BACKEND is not set "
                       "(the oracle picks the first supported backend in priority order)"))
    return 0


def versions_table() -> Table:
    table = Table(title="software", title_justify="left")
    table.add_column("package")
    table.add_column("version")
    table.add_row("python", Text(platform.python_version()))
    table.add_row("moekit", Text(moekit.__version__))
    table.add_row("moekit source", Text(source_digest()))  # as moekit bench records it (bench/provenance.py)
    for name in _PACKAGES:
        table.add_row(name, _version(name))
    table.add_row("torch CUDA build", Text(torch.version.cuda or "none (CPU build)"))
    return table


def _version(package: str) -> Text:
    try:
        return Text(importlib.metadata.version(package))  # without importing it (transformers costs ~1.3 s)
    except importlib.metadata.PackageNotFoundError:
        return Text("not installed", style="dim")


def devices_table() -> Table:
    table = Table(title="devices", title_justify="left")
    table.add_column("device")
    table.add_column("name")
    table.add_column("details")
    cpu = platform.processor() or platform.machine()
    table.add_row("cpu", Text(cpu), Text(f"{os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"))
    if not torch.cuda.is_available():
        table.add_row("cuda", Text("none available", style="dim"), "")
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        details = f"compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, " \
                  f"{props.multi_processor_count} SMs"
        table.add_row(f"cuda:{i}", Text(props.name), Text(details))
    return table


def backend_tables(env: Environment) -> list[Table]:
    """One small table per backend, so each reads at any terminal width."""
    return [backend_table(backend, env) for backend in ALL_BACKENDS]


def backend_table(backend: type[ExpertsBackend], env: Environment) -> Table:
    available = availability(backend, env)
    table = Table(title=Text(f"experts backend {backend.name!r}: {backend.description}"), title_justify="left",
                  show_header=False)
    table.add_column("capability")
    table.add_column("declared")
    table.add_row("available here", available)
    for name, value in capability_rows(backend):
        table.add_row(name, Text(value))
    return table


def availability(backend: type[ExpertsBackend], env: Environment) -> Text:
    """``Backend.available(env)`` (software, hardware generation), and whether a device it declares is here."""
    ok, reason = backend.available(env)
    if not ok:
        return Text(f"no: {reason}", style="red")
    here = {"cpu"} | ({"cuda"} if env.cuda_available else set())
    if not backend.devices & here:
        return Text(f"no: none of its devices ({_join(backend.devices)}) is on this machine", style="red")
    return Text("yes", style="green")


def capability_rows(backend: type[ExpertsBackend]) -> list[tuple[str, str]]:
    """The backend's class-level capability data, as (name, value) rows."""
    return [
        ("devices", _join(backend.devices)),
        ("dtypes", _join(dtype_name(d) for d in backend.dtypes)),
        ("quant schemes", _join(backend.quant_schemes)),
        ("activations", _join(a.value for a in backend.activations)),
        ("gate/up layouts", _join(layout.value for layout in backend.gate_up_layouts)),
        ("parallel layouts", _join(p.value for p in backend.parallel_layouts)),
        ("expert biases", "yes" if backend.supports_bias else "no"),
        ("router weight on input", "yes" if backend.supports_router_weight_on_input else "no"),
    ]


def _join(values) -> str:
    return ", ".join(sorted(values))
