"""Routing metadata for the PyTorch backends: the (token, slot) pairs of a batch sorted by expert.
Built from device ops alone (no host sync); pairs with an id outside [0, E) sort last, into a
segment no expert owns, and get no weight."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExpertSortedRows:
    """Row r of the sorted order is the pair flat index ``order[r]`` = token * k + slot."""

    order: torch.Tensor  # [T*k] int64: flat pair index of each sorted row (a permutation)
    token_of_row: torch.Tensor  # [T*k] int64: the token each sorted row came from (order // k)
    counts: torch.Tensor  # [E] int64: rows per expert (out-of-range ids not counted)
    offsets: torch.Tensor  # [E+1] int64: rows of expert e are [offsets[e], offsets[e+1])
    valid_row: torch.Tensor  # [T*k] bool: the sorted row's id lies in [0, E)

    def segments(self) -> Iterator[tuple[int, int, int]]:
        """(expert, start, end) for each expert that got at least one row; one host sync."""
        offsets = self.offsets.tolist()
        for expert in torch.nonzero(self.counts).flatten().tolist():
            yield expert, offsets[expert], offsets[expert + 1]

    def weight_and_sum(self, y_sorted: torch.Tensor, topk_weights: torch.Tensor, num_tokens: int,
                       out_dtype: torch.dtype) -> torch.Tensor:
        """Scale each sorted row by its routing weight and sum a token's k rows in fp32: [T, H].
        Rows of out-of-range ids may hold anything (never computed): they are masked, not weighted."""
        weight = topk_weights.reshape(-1)[self.order].float().unsqueeze(-1)
        y = torch.where(self.valid_row.unsqueeze(-1), y_sorted.float() * weight, 0.0)
        out = torch.zeros(num_tokens, y.shape[1], device=y.device, dtype=torch.float32)
        return out.index_add_(0, self.token_of_row, y).to(out_dtype)


def sort_by_expert(topk_ids: torch.Tensor, num_experts: int) -> ExpertSortedRows:
    """Group the T*k (token, slot) pairs by expert; stable, so rows of one expert keep token order."""
    top_k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    valid = (flat >= 0) & (flat < num_experts)
    flat = torch.where(valid, flat, num_experts)  # out-of-range ids: one spare bin after the experts
    order = torch.argsort(flat, stable=True)
    # scatter_add_, not bincount: bincount reads the maximum on the host (a sync).
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device)
    torch.cumsum(counts[:num_experts], dim=0, out=offsets[1:])
    return ExpertSortedRows(order=order, token_of_row=order // top_k, counts=counts[:num_experts],
                            offsets=offsets, valid_row=valid[order])
