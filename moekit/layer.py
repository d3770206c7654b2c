"""``moekit.MoE``: the layer. It owns its router, expert weights, optional shared experts and its
modular kernel, which is composed once (after construction, loading or a move) and can be printed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moekit._checks import check_positive_int, check_router_weight_on_input, check_tensor, check_top_k
from moekit.activations import Activation, GateUpLayout, parse_activation
from moekit.experts.base import ExpertWeights
from moekit.explain import Explanation
from moekit.hardware import current_environment, default_device
from moekit.kernel.build import build_kernel
from moekit.parallel import ExpertParallel
from moekit.problem import MoEProblem
from moekit.quant import parse_quant
from moekit.routing import RoutingConfig, route_with_config
from moekit.shared_experts import SharedExperts


class MoE(nn.Module):
    """Router -> routed experts (+ shared experts) for x [T, H] or [B, S, H].

    Parameters (moekit layout): ``router.weight`` [E, H] (+ ``router.bias`` [E]),
    ``correction_bias`` [E] (buffer, selection only), ``w13`` [E, 2I, H] (gate rows first, or
    interleaved), ``w2`` [E, H, I], ``w13_bias`` [E, 2I], ``w2_bias`` [E, H], and
    ``shared_experts.{gate_proj,up_proj,down_proj,shared_expert_gate}.weight``.
    """

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        activation: str | Activation = "silu",
        routing: RoutingConfig | str | None = None,
        shared_intermediate_size: int | None = None,
        quant: str | None = None,
        parallel: ExpertParallel | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        *,
        shared_expert_gate: bool = False,
        expert_bias: bool = False,
        router_bias: bool = False,
        gate_up_layout: str | GateUpLayout = GateUpLayout.CONCATENATED,
        apply_router_weight_on_input: bool = False,
        router_dtype: torch.dtype | None = None,
        backend: str | None = None,
    ):
        super().__init__()
        for name, value in (("num_experts", num_experts), ("hidden_size", hidden_size),
                            ("intermediate_size", intermediate_size)):
            check_positive_int(name, value)
        check_top_k(top_k, num_experts)
        if apply_router_weight_on_input:
            check_router_weight_on_input(top_k)
        if parallel is not None:
            raise NotImplementedError("expert parallelism (parallel=ExpertParallel(...)) is not built yet")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        self.num_experts, self.top_k = num_experts, top_k
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.activation = parse_activation(activation)
        self.gate_up_layout = GateUpLayout(gate_up_layout)
        self.routing = RoutingConfig.parse(routing)
        self.quant = parse_quant(quant)
        self.apply_router_weight_on_input = apply_router_weight_on_input
        self.router_dtype = router_dtype  # None: the router runs in the layer's dtype (DeepSeek-V3: fp32)
        self.backend_request = backend
        factory = {"dtype": dtype, "device": torch.device(device) if device is not None else default_device()}

        self.router = nn.Linear(hidden_size, num_experts, bias=router_bias, **factory)
        correction = torch.zeros(num_experts, dtype=torch.float32, device=factory["device"])
        self.register_buffer("correction_bias", correction if self.routing.correction_bias else None)
        gemm1_rows = 2 * intermediate_size if self.activation.gated else intermediate_size
        self.w13 = nn.Parameter(torch.empty(num_experts, gemm1_rows, hidden_size, **factory))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size, **factory))
        self.w13_bias = nn.Parameter(torch.empty(num_experts, gemm1_rows, **factory)) if expert_bias else None
        self.w2_bias = nn.Parameter(torch.empty(num_experts, hidden_size, **factory)) if expert_bias else None
        self.shared_experts = None
        if shared_intermediate_size is not None:
            check_positive_int("shared_intermediate_size", shared_intermediate_size)
            self.shared_experts = SharedExperts(
                hidden_size, shared_intermediate_size, self.activation, gate=shared_expert_gate, **factory
            )
        self.reset_parameters()
        # Whatever changes the weights' storage (loading, .to()) composes the kernel anew.
        self.register_load_state_dict_post_hook(lambda module, _: module.compose_kernel())
        self.compose_kernel()
        self._constructed = True

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random weights scaled like nn.Linear, so a fresh layer gives non-trivial outputs."""
        for p in (self.router.weight, self.w13):
            p.normal_(0.0, 1.0 / math.sqrt(self.hidden_size))
        self.w2.normal_(0.0, 1.0 / math.sqrt(self.intermediate_size))
        for p in (self.router.bias, self.w13_bias, self.w2_bias):
            if p is not None:
                p.normal_(0.0, 0.02)

    def problem(self) -> MoEProblem:
        return MoEProblem(
            num_experts=self.num_experts,
            top_k=self.top_k,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            dtype=self.w13.dtype,
            device_type=self.w13.device.type,
            activation=self.activation,
            gate_up_layout=self.gate_up_layout,
            quant=self.quant,
            has_bias=self.w13_bias is not None,
            apply_router_weight_on_input=self.apply_router_weight_on_input,
        )

    def compose_kernel(self) -> None:
        """Choose the experts backend for the current weights and convert them to its format.

        Skipped while the weights are on the meta device: a layer built there (no memory) to take
        over existing tensors composes once they are assigned."""
        if self.w13.is_meta:
            return
        weights = ExpertWeights(self.w13, self.w2, self.w13_bias, self.w2_bias)
        problem = self.problem()
        self.kernel, selection = build_kernel(problem, weights, current_environment(), self.backend_request)
        self._explanation = Explanation(problem, selection, self.kernel.describe())

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        if self.__dict__.get("_constructed"):  # .to()/.to_empty() after __init__
            self.compose_kernel()
        return module

    def explain(self) -> Explanation:
        """The backend chosen for this layer and why each other one was refused."""
        if "kernel" not in self.__dict__:
            raise RuntimeError("this layer's weights are on the meta device: no kernel is composed yet")
        return self._explanation

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> (topk_weights [T, k] fp32, topk_ids [T, k] int32)."""
        if self.router_dtype is None:
            logits = self.router(x)
        else:
            bias = self.router.bias.to(self.router_dtype) if self.router.bias is not None else None
            logits = F.linear(x.to(self.router_dtype), self.router.weight.to(self.router_dtype), bias)
        return route_with_config(logits, self.top_k, self.routing, self.correction_bias)

    def forward(self, x: torch.Tensor, *, return_routing: bool = False):
        """x [T, H] or [B, S, H] -> same shape; with ``return_routing`` also (topk_weights, topk_ids)."""
        self._check_input(x)
        tokens = x.reshape(-1, self.hidden_size)
        topk_weights, topk_ids = self.route(tokens)
        out = self.kernel.apply(tokens, topk_weights, topk_ids, shared_experts=self.shared_experts)
        out = out.reshape(x.shape)
        return (out, (topk_weights, topk_ids)) if return_routing else out

    def _check_input(self, x) -> None:
        check_tensor("x", x, dtypes=(self.w13.dtype,))
        if x.dim() not in (2, 3) or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [T, {self.hidden_size}] or [B, S, {self.hidden_size}], got {tuple(x.shape)}")
        if x.device != self.w13.device:
            raise ValueError(f"x is on {x.device} but the layer's weights are on {self.w13.device}")

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, top_k={self.top_k}, hidden={self.hidden_size}, "
                f"intermediate={self.intermediate_size}, activation={self.activation.name}, "
                f"quant={self.quant}, backend={self._explanation.backend if 'kernel' in self.__dict__ else None}")
