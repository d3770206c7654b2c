"""``moekit eplb``: how far the expert load balancer evens out a skewed load — the busiest rank's
load over the mean (max/mean) for a contiguous placement and for rebalanced ones, per rank count.

The load is a Zipf trace (default) or a JSON list of per-expert token counts (what
``layer.load_stats.load().tolist()`` gives). A live expert-parallel layer is rebalanced with
``layer.rebalance()`` on every rank (docs/expert-parallel.md)."""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from moekit.cli.common import CliError
from moekit.ep.eplb import imbalance, rebalance, zipf_load
from moekit.ep.placement import ExpertPlacement


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eplb", help="report the expert-load imbalance over ranks before and after rebalancing",
        description="Place the experts of a load trace on 2, 4, 8... ranks: contiguous slices, then the "
                    "rebalancer with 0, 1, 2... spare slots per rank for redundant replicas of hot experts; "
                    "print max/mean rank load for each.")
    parser.add_argument("--experts", type=int, default=256, help="logical experts (default 256)")
    parser.add_argument("--ranks", default="2,4,8", help="rank counts, comma-separated (default 2,4,8)")
    parser.add_argument("--spare-slots", default="0,1,2", help="extra slots per rank, comma-separated (default 0,1,2)")
    parser.add_argument("--load", metavar="FILE.json", help="per-expert token counts (a JSON list) instead of Zipf")
    parser.add_argument("--zipf", type=float, default=1.2, help="Zipf exponent of the synthetic trace (default 1.2)")
    parser.add_argument("--pairs", type=int, default=1_000_000, help="token pairs in the synthetic trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=eplb_command)


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise CliError(f"--{name} takes comma-separated integers, got {text!r}") from e


def eplb_command(args: argparse.Namespace, console: Console) -> int:
    if args.load:
        try:
            load = torch.tensor(json.loads(open(args.load).read()), dtype=torch.float64)
        except (OSError, ValueError, TypeError) as e:
            raise CliError(f"cannot read a list of per-expert counts from {args.load}: {e}") from e
        if load.dim() != 1 or load.numel() == 0:
            raise CliError(f"{args.load} must hold a flat list of per-expert counts")
        source = f"{args.load} ({load.numel()} experts)"
    else:
        load = zipf_load(args.experts, args.pairs, args.zipf, args.seed)
        source = f"Zipf {args.zipf} over {args.experts} experts, {args.pairs} pairs, seed {args.seed}"
    spare = _ints(args.spare_slots, "spare-slots")
    table = Table(title=f"max/mean rank load — {source}", title_justify="left")
    table.add_column("ranks", justify="right")
    table.add_column("contiguous", justify="right")
    for s in spare:
        table.add_column(f"rebalanced +{s} slot{'s' if s != 1 else ''}", justify="right")
    experts = load.numel()
    for world in _ints(args.ranks, "ranks"):
        if world > experts:
            raise CliError(f"{world} ranks exceed the {experts} experts")
        row = [str(world), f"{imbalance(load, ExpertPlacement.contiguous(experts, world)).max_over_mean:.3f}"]
        for s in spare:
            slots = -(-experts // world) + s
            try:
                row.append(f"{imbalance(load, rebalance(load, world, slots)).max_over_mean:.3f}")
            except ValueError as e:
                row.append(f"— ({e})")
        table.add_row(*row)
    console.print(table)
    return 0
