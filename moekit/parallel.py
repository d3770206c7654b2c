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
    - ``max_tokens_per_rank``: a bound on any rank's tokens per forward. With it the all-to-all
      moves fixed-size blocks (no counts exchange, no host sync); without
      it the rows are counted first (a host sync) and only the needed ones travel.
    - ``fp8_dispatch``: token rows travel as e4m3 with a per-row scale (half the bytes; the experts
      see fp8-rounded activations: ep/fp8_dispatch.py). All-to-all forms only.
    - ``max_tokens_per_chunk``: a forward with more tokens on some rank runs as several dispatch /
      experts / combine rounds of at most this many tokens per rank, so the buffers stay bounded;
      the ranks agree on the number of rounds first (one all-reduce, read on the host).
    """

    group: Any = None
    communication: str = "auto"
    timeout_s: float = 300.0
    placement: ExpertPlacement | None = None
    max_tokens_per_rank: int | None = None
    fp8_dispatch: bool = False
    max_tokens_per_chunk: int | None = None

    def __post_init__(self):
        if self.communication not in COMMUNICATIONS:
            raise ValueError(f"communication must be one of {COMMUNICATIONS}, got {self.communication!r}")
        if self.max_tokens_per_rank is not None and self.max_tokens_per_rank < 1:
            raise ValueError(f"max_tokens_per_rank must be at least 1, got {self.max_tokens_per_rank}")
        if self.max_tokens_per_chunk is not None and self.max_tokens_per_chunk < 1:
            raise ValueError(f"max_tokens_per_chunk must be at least 1, got {self.max_tokens_per_chunk}")
        if None not in (self.max_tokens_per_chunk, self.max_tokens_per_rank) and \
                self.max_tokens_per_chunk > self.max_tokens_per_rank:
            raise ValueError(f"max_tokens_per_chunk ({self.max_tokens_per_chunk}) exceeds the fixed capacity "
                             f"max_tokens_per_rank ({self.max_tokens_per_rank})")
        if self.fp8_dispatch and self.communication == "all-gather":
            raise ValueError("fp8_dispatch is an option of the all-to-all forms, not of all-gather")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
