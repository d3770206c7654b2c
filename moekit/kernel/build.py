"""Compose a modular kernel for a problem: ask the scheme's oracle, convert the weights once.

The oracle's verdict depends only on the problem, the machine and the request, so it is cached on
those (never on data pointers): ``moekit.fused_moe`` pays for selection once per problem."""

from __future__ import annotations

from moekit.experts.base import ExpertWeights
from moekit.hardware import Environment
from moekit.kernel.modular import ModularKernel
from moekit.kernel.prepare_finalize import SINGLE_DEVICE
from moekit.oracle import Selection, oracle_for, select_backend
from moekit.problem import MoEProblem


def build_kernel(
    problem: MoEProblem, weights: ExpertWeights, env: Environment, requested: str | None = None,
    prepare_finalize=None, own_codes: bool = False,
) -> tuple[ModularKernel, Selection]:
    """``requested`` (an argument) wins over ``env.requested_backend`` (MOEKIT_BACKEND).
    ``prepare_finalize``: an expert-parallel one (moekit/ep/); None is the single-device one.
    ``own_codes``: the caller owns the weights' tensors, which the conversion to the chosen backend's
    format may then reorder in place (oracle/quantized.py; the layer does, nothing else)."""
    selection = select_cached(problem, env, requested or env.requested_backend)
    kernel = ModularKernel(
        prepare_finalize=prepare_finalize or SINGLE_DEVICE,
        experts=selection.chosen(),
        weights=oracle_for(problem.quant).convert_weights(selection.chosen, weights, own_codes),
        activation=problem.activation,
        gate_up_layout=problem.gate_up_layout,
        apply_router_weight_on_input=problem.apply_router_weight_on_input,
    )
    return kernel, selection


_SELECTIONS: dict[tuple, Selection] = {}  # a plain dict: torch.compile traces it without a warning


def select_cached(problem: MoEProblem, env: Environment, requested: str | None) -> Selection:
    key = (problem, env, requested)
    if key not in _SELECTIONS:
        _SELECTIONS[key] = select_backend(problem, env, oracle_for(problem.quant).priority, requested)
    return _SELECTIONS[key]
