"""Expert-parallel configuration, the layer's ``parallel`` argument (the machinery is in moekit/ep/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moekit.ep.placement import ExpertPlacement

COMMUNICATIONS = ("auto", "all-to-all", "all-gather")


@dataclass(frozen=True)
class ExpertParallel:
    """Shard a layer's experts over the ranks of a torch.distributed group (NCCL on GPUs, gloo on
    CPUs). Every rank builds the same layer; each holds only its experts, the router and shared
    experts replicated, and routes its own tokens.

    - ``group``: a ProcessGroup; None is the default group.
    - ``communication``: "all-to-all" (tokens travel only to the ranks holding their experts),
      "all-gather" (every token to every rank, partial outputs reduce-scattered back) or "auto"
      (the selection in ep/selection.py; ``layer.explain()`` shows it and why).
    - ``timeout_s``: how long a rank waits on one collective before raising ExpertParallelError.
    - ``placement``: which logical experts each rank holds (default: contiguous slices; the load
      balancer in ep/eplb.py makes placements with redundant replicas of hot experts).
    """

    group: Any = None
    communication: str = "auto"
    timeout_s: float = 300.0
    placement: ExpertPlacement | None = None

    def __post_init__(self):
        if self.communication not in COMMUNICATIONS:
            raise ValueError(f"communication must be one of {COMMUNICATIONS}, got {self.communication!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
