"""Expert load balancing (EPLB): count how many token pairs each logical expert got over a sliding
window of forward passes, and place the experts, with redundant replicas of the hot ones, so that
the busiest rank carries as little as possible.

The placement is computed in two greedy steps (the shape of DeepSeek's EPLB, written anew):

1. replicas: with S slots per rank and W ranks there are W*S - E spare slots; each goes to the
   logical expert whose load per replica is the largest at that moment (at most one replica per
   rank);
2. packing: physical replicas (each carrying load / replicas of its expert), heaviest first, go to
   the least loaded rank that has a free slot and does not hold that expert yet.

A pair of logical expert e goes to replica ``t % replicas(e)`` (placement.py), so replicas share an
expert's tokens evenly on average; the rank loads below assume exactly that.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from moekit.ep.placement import ExpertPlacement


class ExpertLoadStats:
    """Token pairs per logical expert over the last ``window`` forward passes (device-side counts,
    no host sync per step)."""

    def __init__(self, num_experts: int, window: int, device):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.counts = torch.zeros(window, num_experts, dtype=torch.int64, device=device)
        self.step = 0

    def record(self, topk_ids: torch.Tensor) -> None:
        row = self.counts[self.step % self.counts.shape[0]]
        row.zero_()
        ids = topk_ids.reshape(-1).long().to(row.device)  # (the layer may have moved since)
        ids = ids[(ids >= 0) & (ids < row.numel())]
        row.scatter_add_(0, ids, torch.ones_like(ids))
        self.step += 1

    def load(self) -> torch.Tensor:
        """[E] pairs per expert over the window (fp64, on the host)."""
        return self.counts.sum(0).double().cpu()


def rank_loads(load: torch.Tensor, placement: ExpertPlacement) -> torch.Tensor:
    """[W] the load each rank carries when each expert's load is split evenly over its replicas."""
    replicas = torch.tensor(placement.replica_counts(), dtype=torch.float64)
    share = load.double() / replicas
    return torch.stack([share[list(experts)].sum() if experts else torch.zeros((), dtype=torch.float64)
                        for experts in placement.ranks])


@dataclass(frozen=True)
class Imbalance:
    max_over_mean: float
    rank_loads: list[float]

    def __str__(self) -> str:
        return f"max/mean {self.max_over_mean:.3f} (rank loads {', '.join(f'{x:.0f}' for x in self.rank_loads)})"


def imbalance(load: torch.Tensor, placement: ExpertPlacement) -> Imbalance:
    loads = rank_loads(load, placement)
    mean = loads.mean().item()
    return Imbalance(loads.max().item() / mean if mean > 0 else 1.0, loads.tolist())


def rebalance(load: torch.Tensor, world_size: int, slots_per_rank: int) -> ExpertPlacement:
    """A placement of ``len(load)`` logical experts on ``world_size`` ranks of ``slots_per_rank``
    physical experts each (redundant replicas fill the spare slots) that keeps the busiest rank's
    load small."""
    num_experts = load.numel()
    slots = world_size * slots_per_rank
    if slots < num_experts:
        raise ValueError(f"{world_size} ranks x {slots_per_rank} slots hold {slots} physical experts, fewer than "
                         f"the {num_experts} logical ones")
    if slots_per_rank > num_experts:
        raise ValueError(f"{slots_per_rank} slots per rank exceed the {num_experts} experts (a rank holds an expert "
                         "at most once)")
    load = load.double().cpu().clamp_min(0) + 1e-9  # experts without load still need a home
    replicas = [1] * num_experts
    heap = [(-load[e].item(), e) for e in range(num_experts)]  # max-heap on load per replica
    heapq.heapify(heap)
    for _ in range(slots - num_experts):
        while heap and replicas[heap[0][1]] == world_size:  # one replica per rank at most
            heapq.heappop(heap)
        if not heap:
            break  # every expert is on every rank: the spare slots stay empty
        _, e = heapq.heappop(heap)
        replicas[e] += 1
        heapq.heappush(heap, (-load[e].item() / replicas[e], e))
    physical = sorted(((load[e].item() / replicas[e], e) for e in range(num_experts) for _ in range(replicas[e])),
                      reverse=True)
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    totals = [0.0] * world_size
    for share, e in physical:
        candidates = [r for r in range(world_size) if len(ranks[r]) < slots_per_rank and e not in ranks[r]]
        if not candidates:
            raise ValueError(f"no rank has a free slot for a replica of expert {e}")
        best = min(candidates, key=lambda r: (totals[r], len(ranks[r])))
        ranks[best].append(e)
        totals[best] += share
    return ExpertPlacement(num_experts, tuple(tuple(r) for r in ranks))


def zipf_load(num_experts: int, pairs: int, exponent: float = 1.2, seed: int = 0) -> torch.Tensor:
    """A skewed load trace: ``pairs`` token pairs drawn from a Zipf law over randomly ranked experts."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, num_experts + 1, dtype=torch.float64) ** exponent
    weights = weights[torch.randperm(num_experts, generator=g)]
    draws = torch.multinomial(weights, pairs, replacement=True, generator=g)
    return torch.bincount(draws, minlength=num_experts).double()
