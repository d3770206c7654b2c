"""Expert-parallel configuration. The layer accepts it today so the contract is stable; the
all-to-all prepare/finalize that serves it is the next piece of work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExpertParallel:
    group: Any = None  # a torch.distributed ProcessGroup; None means the default group
