"""Backend selection: one pure function of (problem, environment, candidates, request).

It returns the chosen backend and, for every other candidate, why it was not chosen. A request that
names an unknown or unsuitable backend is an error that says why; it never falls back silently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moekit.experts.base import ExpertsBackend
from moekit.hardware import Environment
from moekit.problem import MoEProblem


class BackendUnavailableError(ValueError):
    """An explicitly requested backend cannot serve this problem, or none can."""


@dataclass(frozen=True)
class Verdict:
    backend: str
    supported: bool
    reason: str  # why it is refused, or why it was passed over


@dataclass(frozen=True)
class Selection:
    chosen: type[ExpertsBackend]
    verdicts: tuple[Verdict, ...]  # every candidate, in priority order
    requested: str | None  # the backend the caller asked for, if any

    def table(self) -> list[tuple[str, str, str]]:
        """(backend, status, reason) rows, in priority order."""
        rows = []
        for v in self.verdicts:
            status = "chosen" if v.backend == self.chosen.name else ("usable" if v.supported else "refused")
            rows.append((v.backend, status, v.reason))
        return rows


def select_backend(
    problem: MoEProblem,
    env: Environment,
    candidates: Sequence[type[ExpertsBackend]],
    requested: str | None = None,
) -> Selection:
    names = [c.name for c in candidates]
    if requested is not None and requested not in names:
        raise BackendUnavailableError(f"unknown experts backend {requested!r} for quant {problem.quant!r}; known: {names}")
    verdicts, chosen = [], None
    for backend in candidates:
        ok, reason = backend.supports(problem, env)
        wanted = requested is None or backend.name == requested
        only_by_name = backend.explicit_only(problem, env) if ok else None
        if ok and only_by_name and requested != backend.name:
            reason = f"usable only when requested by name: {only_by_name}"
        elif ok and wanted and chosen is None:
            chosen, reason = backend, ("requested" if requested else "first supported in priority order")
        elif ok:
            reason = f"not requested (asked for {requested!r})" if requested else f"lower priority than {chosen.name}"
        verdicts.append(Verdict(backend.name, ok, reason))
    if chosen is None:
        detail = "; ".join(f"{v.backend}: {v.reason}" for v in verdicts)
        if requested is not None:
            raise BackendUnavailableError(f"requested experts backend {requested!r} cannot serve this layer: {detail}")
        raise BackendUnavailableError(f"no experts backend can serve this layer: {detail}")
    return Selection(chosen=chosen, verdicts=tuple(verdicts), requested=requested)
