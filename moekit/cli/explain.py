"""``moekit explain``: build a preset's layer and show which experts backend the oracle chose, and
why every other backend was refused or passed over."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table
from rich.text import Text

from moekit.cli.common import add_layer_arguments, build_and_show
from moekit.explain import Explanation

_STATUS_STYLE = {"chosen": "bold green", "usable": "yellow", "refused": "red"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain", help="show the experts backend chosen for a model's layer, and why",
        description="Build the preset's moekit.MoE and print layer.explain(): the backend the oracle chose and "
                    "the reason for every other candidate, in priority order.")
    add_layer_arguments(parser)
    parser.set_defaults(handler=explain_command)


def explain_command(args: argparse.Namespace, console: Console) -> int:
    setup, layer = build_and_show(args, console)
    console.print(backend_table(layer.explain()))
    return 0


def backend_table(explanation: Explanation) -> Table:
    selection = explanation.selection
    caption = f"requested: {selection.requested}" if selection.requested else "no backend requested"
    table = Table(title=Text(f"{explanation.summary()}\nkernel: {explanation.kernel}"), title_justify="left",
                  caption=caption, caption_justify="left")
    table.add_column("backend")
    table.add_column("status")
    table.add_column("reason")
    for name, status, reason in selection.table():
        table.add_row(Text(name), Text(status, style=_STATUS_STYLE.get(status, "")), Text(reason))
    return table
