"""All-gather / reduce-scatter prepare/finalize (the data-parallel form): every rank receives every
rank's tokens, runs its local experts on the pairs they serve (other pairs masked), and a
reduce-scatter sums the partial outputs and hands each rank its own tokens back.

Bytes per rank and step: W * T rows of H in, the same in fp32 out; simple and balanced, and the
reference the all-to-all path is compared with. Token counts may differ per rank (padded to the
largest, read on the host: a sync)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moekit.ep.collectives import Collectives
from moekit.ep.placement import ExpertPlacement, route_pairs
from moekit.kernel.prepare_finalize import PreparedTokens, add_shared, weight_on_input


@dataclass(frozen=True)
class GatherPlan:
    num_tokens: int
    padded: int  # rows per rank after padding to the largest count


class AllGatherPrepareFinalize:
    name = "all-gather"

    def __init__(self, placement: ExpertPlacement, comm: Collectives, device):
        self.placement, self.comm = placement, comm
        self.tables = placement.tables(device)

    def prepare(self, x, topk_weights, topk_ids, apply_router_weight_on_input: bool) -> PreparedTokens:
        x, topk_weights = weight_on_input(x, topk_weights, apply_router_weight_on_input)
        num_tokens, top_k = topk_ids.shape
        padded = max(self.comm.gather_counts(num_tokens, x.device))
        world = self.comm.world_size
        pad = padded - num_tokens
        # routes are taken where the token lives (its replica choice depends on its index there)
        routes = route_pairs(topk_ids, self.tables)
        meta = torch.cat([routes.rank, routes.local], dim=1).to(torch.int32)
        weights = torch.nn.functional.pad(topk_weights.float(), (0, 0, 0, pad))
        meta = torch.nn.functional.pad(meta, (0, 0, 0, pad), value=-1)  # padding rows: rank -1, served by none
        all_x = x.new_empty(world * padded, x.shape[1])
        all_meta = meta.new_empty(world * padded, 2 * top_k)
        all_weights = weights.new_empty(world * padded, top_k)
        self.comm.all_gather(all_x, torch.nn.functional.pad(x, (0, 0, 0, pad)), "all-gather of token rows")
        self.comm.all_gather(all_meta, meta, "all-gather of expert routes")
        self.comm.all_gather(all_weights, weights, "all-gather of routing weights")
        mine = all_meta[:, :top_k] == self.comm.rank
        ids = torch.where(mine, all_meta[:, top_k:], -1)
        return PreparedTokens(x=all_x, topk_weights=torch.where(mine, all_weights, 0.0), topk_ids=ids,
                              plan=GatherPlan(num_tokens, padded))

    def finalize(self, expert_out, shared_out, out_dtype, prepared: PreparedTokens) -> torch.Tensor:
        plan: GatherPlan = prepared.plan
        out = torch.empty(plan.padded, expert_out.shape[1], dtype=torch.float32, device=expert_out.device)
        self.comm.reduce_scatter_sum(out, expert_out.float().contiguous(), "reduce-scatter of expert outputs")
        return add_shared(out[: plan.num_tokens], shared_out, out_dtype)
