"""The choice of an expert-parallel prepare/finalize, with the reason for each candidate (shown by
``layer.explain()``), and its construction."""

from __future__ import annotations

from dataclasses import dataclass

from moekit.ep.all_gather import AllGatherPrepareFinalize
from moekit.ep.all_to_all import AllToAllPrepareFinalize
from moekit.ep.collectives import Collectives
from moekit.ep.placement import ExpertPlacement

IMPLEMENTATIONS = {"all-to-all": AllToAllPrepareFinalize, "all-gather": AllGatherPrepareFinalize}
WHY = {
    "all-to-all": "each token travels only to the ranks holding its experts (at most min(k, W) copies) and back",
    "all-gather": "every token travels to all W ranks and W x T fp32 rows come back: W/min(k, W) times the "
                  "bytes of all-to-all; kept for comparison and small groups",
}


@dataclass(frozen=True)
class ParallelChoice:
    placement: ExpertPlacement
    rank: int
    communication: str
    rows: tuple[tuple[str, str, str], ...]  # (name, status, reason) per candidate

    def describe(self) -> list[str]:
        lines = [f"expert parallel: {self.placement.describe(self.rank)}"]
        lines += [f"  {name:<10}  {status:<7}  {reason}" for name, status, reason in self.rows]
        return lines


def choose_communication(requested: str) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    chosen = "all-to-all" if requested == "auto" else requested
    rows = []
    for name in IMPLEMENTATIONS:
        if name == chosen:
            how = "requested" if requested != "auto" else "auto"
            rows.append((name, "chosen", f"{how}: {WHY[name]}"))
        else:
            why = "not requested" if requested != "auto" else WHY[name]
            rows.append((name, "passed", why))
    return chosen, tuple(rows)


def build_prepare_finalize(parallel, placement: ExpertPlacement, comm: Collectives, device):
    chosen, rows = choose_communication(parallel.communication)
    impl = IMPLEMENTATIONS[chosen](placement, comm, device)
    return impl, ParallelChoice(placement, comm.rank, chosen, rows)
