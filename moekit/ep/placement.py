"""Where the experts live: each rank holds a list of physical experts, each a copy of one logical
(router) expert. Without redundancy rank r holds a contiguous slice; the load balancer (eplb.py)
may give a hot logical expert several physical replicas on different ranks.

A token's pair (token t, logical expert e) goes to replica ``t % replicas(e)`` of e: deterministic,
spreads one expert's tokens evenly over its replicas, and needs no communication."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExpertPlacement:
    num_logical: int
    ranks: tuple[tuple[int, ...], ...]  # ranks[r] = logical ids of rank r's physical experts, in local order

    def __post_init__(self):
        if not self.ranks:
            raise ValueError("an expert placement needs at least one rank")
        held = sorted({e for r in self.ranks for e in r})
        if held != list(range(self.num_logical)):
            missing = sorted(set(range(self.num_logical)) - set(held))
            extra = sorted(set(held) - set(range(self.num_logical)))
            raise ValueError(f"expert placement must hold every logical expert 0..{self.num_logical - 1} at least "
                             f"once: missing {missing}, out of range {extra}")
        for rank, experts in enumerate(self.ranks):
            if len(set(experts)) != len(experts):
                raise ValueError(f"rank {rank} holds a logical expert twice: {list(experts)}")

    @staticmethod
    def contiguous(num_experts: int, world_size: int) -> ExpertPlacement:
        """Rank r holds experts [r*E/W, (r+1)*E/W) (the first E % W ranks one more)."""
        if world_size > num_experts:
            raise ValueError(f"expert parallelism over {world_size} ranks needs at least as many experts, "
                             f"got {num_experts}")
        base, extra = divmod(num_experts, world_size)
        starts = [r * base + min(r, extra) for r in range(world_size + 1)]
        return ExpertPlacement(num_experts, tuple(tuple(range(starts[r], starts[r + 1])) for r in range(world_size)))

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def local_experts(self, rank: int) -> tuple[int, ...]:
        return self.ranks[rank]

    def max_replicas(self) -> int:
        return max(self.replica_counts())

    def replica_counts(self) -> list[int]:
        counts = [0] * self.num_logical
        for experts in self.ranks:
            for e in experts:
                counts[e] += 1
        return counts

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(replica_rank [E, R], replica_local [E, R], replicas [E]) int64: the rank and local index
        of each logical expert's replicas (padded with the first replica)."""
        width = self.max_replicas()
        rank_of = [[] for _ in range(self.num_logical)]
        local_of = [[] for _ in range(self.num_logical)]
        for rank, experts in enumerate(self.ranks):
            for local, e in enumerate(experts):
                rank_of[e].append(rank)
                local_of[e].append(local)
        pad = lambda rows: [r + [r[0]] * (width - len(r)) for r in rows]  # noqa: E731
        as_tensor = lambda rows: torch.tensor(rows, dtype=torch.int64, device=device)  # noqa: E731
        return as_tensor(pad(rank_of)), as_tensor(pad(local_of)), as_tensor([len(r) for r in rank_of])

    def describe(self, rank: int) -> str:
        experts = self.ranks[rank]
        if experts and list(experts) == list(range(experts[0], experts[-1] + 1)):
            held = f"experts {experts[0]}..{experts[-1]}"
        else:
            held = f"experts {list(experts)}"
        redundant = sum(self.replica_counts()) - self.num_logical
        extra = f", {redundant} redundant replicas over the group" if redundant else ""
        return f"rank {rank} of {self.world_size} holds {len(experts)} of {self.num_logical} {held}{extra}"


@dataclass(frozen=True)
class PairRoutes:
    """Where each (token, slot) pair of this rank goes: its destination rank and the expert's local
    index there ([T, k] int64 each)."""

    rank: torch.Tensor
    local: torch.Tensor


def route_pairs(topk_ids: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> PairRoutes:
    replica_rank, replica_local, replicas = tables
    ids = topk_ids.long()
    token = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)
    replica = token % replicas[ids]
    return PairRoutes(replica_rank[ids, replica], replica_local[ids, replica])
