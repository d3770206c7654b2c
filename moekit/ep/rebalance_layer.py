"""Rebalancing a live expert-parallel layer: sum its expert load over the group, compute a new
placement (eplb.rebalance, the same on every rank), move the expert weights that change rank by
point-to-point sends from a rank that holds them (never from the checkpoint), and compose the
kernel for the new placement."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from moekit.ep.eplb import Imbalance, imbalance, rebalance
from moekit.ep.placement import ExpertPlacement


def rebalance_layer(layer, slots_per_rank: int | None = None) -> tuple[Imbalance, Imbalance]:
    """Returns the imbalance (max/mean rank load over the tracked window) before and after."""
    if layer.parallel is None:
        raise ValueError("rebalancing moves experts between ranks: the layer needs parallel=ExpertParallel(...)")
    if layer.load_stats is None:
        raise ValueError("the layer tracks no expert load: call layer.track_expert_load(window) and run "
                         "forward passes first")
    comm = layer._comm
    load = layer.load_stats.counts.sum(0).clone()
    comm.all_reduce_sum(load, "all-reduce of expert loads")
    load = load.double().cpu()
    old = layer.placement
    new = rebalance(load, comm.world_size, slots_per_rank or max(len(r) for r in old.ranks))
    move_experts(layer, old, new)
    return imbalance(load, old), imbalance(load, new)


def move_experts(layer, old: ExpertPlacement, new: ExpertPlacement) -> None:
    comm, me = layer._comm, layer._comm.rank
    names = [n for n in layer._EXPERT_TENSORS if getattr(layer, n, None) is not None]
    current = {n: getattr(layer, n).detach() for n in names}
    mine_before = list(old.ranks[me])
    fresh = {n: t.new_empty((len(new.ranks[me]),) + tuple(t.shape[1:])) for n, t in current.items()}
    source = {e: min(r for r in range(old.world_size) if e in old.ranks[r]) for e in range(old.num_logical)}
    peer = lambda r: dist.get_global_rank(comm.group, r) if comm.group is not None else r  # noqa: E731
    ops, tag = [], 0
    for dest, experts in enumerate(new.ranks):
        for slot, e in enumerate(experts):
            if e in old.ranks[dest]:  # it stays: a local copy into its new slot
                if dest == me:
                    for n in names:
                        fresh[n][slot].copy_(current[n][mine_before.index(e)])
                continue
            for n in names:
                if me == source[e]:
                    ops.append(dist.P2POp(dist.isend, current[n][mine_before.index(e)].contiguous(), peer(dest),
                                          comm.group, tag))
                if me == dest:
                    ops.append(dist.P2POp(dist.irecv, fresh[n][slot], peer(source[e]), comm.group, tag))
                tag += 1
    if ops:
        for work in dist.batch_isend_irecv(ops):
            comm._wait(work, "move of expert weights")
    with torch.no_grad():
        for n in names:
            old_t = getattr(layer, n)
            setattr(layer, n, nn.Parameter(fresh[n], requires_grad=old_t.requires_grad)
                    if isinstance(old_t, nn.Parameter) else fresh[n])
    layer.placement, layer.local_experts = new, new.local_experts(me)
    layer.parallel = dataclasses.replace(layer.parallel, placement=new)
    layer.compose_kernel()
