"""The choice of an expert-parallel prepare/finalize, with the reason for each candidate (shown by
``layer.explain()``), and its construction."""

from __future__ import annotations

from dataclasses import dataclass

from moekit.ep.all_gather import AllGatherPrepareFinalize
from moekit.ep.all_to_all import AllToAllPrepareFinalize
from moekit.ep.all_to_all_padded import PaddedAllToAllPrepareFinalize
from moekit.ep.collectives import Collectives
from moekit.ep.placement import ExpertPlacement

FIXED = "all-to-all (fixed capacity)"
WHY = {
    FIXED: "fixed-size blocks of max_tokens_per_rank rows to every rank: no counts exchange, no host sync",
    "all-to-all": "each token travels only to the ranks holding its experts (at most min(k, W) copies) and back; "
                  "the row counts are exchanged and read on the host first",
    "all-gather": "every token travels to all W ranks and W x T fp32 rows come back: W/min(k, W) times the "
                  "bytes of all-to-all; kept for comparison and small groups",
}


@dataclass(frozen=True)
class ParallelChoice:
    placement: ExpertPlacement
    rank: int
    communication: str
    rows: tuple[tuple[str, str, str], ...]  # (name, status, reason) per candidate

    fp8_dispatch: bool = False

    def describe(self) -> list[str]:
        rows = " (token rows dispatched as fp8)" if self.fp8_dispatch else ""
        lines = [f"expert parallel: {self.placement.describe(self.rank)}{rows}"]
        lines += [f"  {name:<27}  {status:<7}  {reason}" for name, status, reason in self.rows]
        return lines


def choose_communication(requested: str, capacity: int | None) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    """all-to-all takes the fixed-capacity form when a capacity is given; "auto" is all-to-all."""
    if requested == "all-gather":
        chosen = "all-gather"
    else:
        chosen = FIXED if capacity is not None else "all-to-all"
    rows = []
    for name in WHY:
        if name == chosen:
            rows.append((name, "chosen", f"{'auto' if requested == 'auto' else 'requested'}: {WHY[name]}"))
        elif name == FIXED and capacity is None:
            rows.append((name, "refused", "needs ExpertParallel(max_tokens_per_rank=...)"))
        elif requested != "auto":
            rows.append((name, "passed", f"not requested ({requested!r} was)"))
        else:
            rows.append((name, "passed", WHY[name]))
    return chosen, tuple(rows)



def build_prepare_finalize(parallel, placement: ExpertPlacement, comm: Collectives, device):
    chosen, rows = choose_communication(parallel.communication, parallel.max_tokens_per_rank)
    if chosen == FIXED:
        impl = PaddedAllToAllPrepareFinalize(placement, comm, device, parallel.max_tokens_per_rank,
                                             parallel.fp8_dispatch)
    elif chosen == "all-to-all":
        impl = AllToAllPrepareFinalize(placement, comm, device, parallel.fp8_dispatch)
    else:
        impl = AllGatherPrepareFinalize(placement, comm, device)
    return impl, ParallelChoice(placement, comm.rank, chosen, rows, parallel.fp8_dispatch)
