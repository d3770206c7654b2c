"""The ``moekit`` command: argument parsing and dispatch to one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from rich.markup import escape

import moekit
from moekit.cli import asm, bench, eplb, explain, info, run, tune
from moekit.cli.common import CliError, make_console

_COMMANDS = (run, explain, info, tune, bench, eplb, asm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moekit", description="moekit: one fast, modular, explainable Mixture-of-Experts layer.",
        epilog="Run 'moekit COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"moekit {moekit.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       title="commands")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 done, 1 a check failed, 2 bad arguments or an unusable setup."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, argument errors: argparse has printed its message
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.handler(args, make_console())
    except CliError as e:
        make_console(stderr=True).print(f"[bold red]moekit {args.command}: error:[/] {escape(str(e))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
