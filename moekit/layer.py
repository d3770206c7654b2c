"""``moekit.MoE``: the layer. It owns its router, expert weights, optional shared experts and its
modular kernel, which is composed once (after construction, loading or a move) and can be printed."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from moekit._checks import check_positive_int, check_router_weight_on_input, check_shape, check_tensor, check_top_k
from moekit.activations import Activation, GateUpLayout, parse_activation
from moekit.experts.base import ExpertWeights
from moekit.explain import Explanation
from moekit.hardware import current_environment, default_device
from moekit.kernel.build import build_kernel
from moekit.parallel import ExpertParallel
from moekit.problem import MoEProblem, ParallelLayout
from moekit.quant import QuantizedMatrix, method_for, parse_quant
from moekit.quant.code_order import to_plain_order
from moekit.quant.scale_layout import word_padded
from moekit.routing import RoutingConfig, route_with_config
from moekit.shared_experts import SharedExperts


class MoE(nn.Module):
    """Router -> routed experts (+ shared experts) for x [T, H] or [B, S, H].

    Parameters (moekit layout): ``router.weight`` [E, H] (+ ``router.bias`` [E]),
    ``correction_bias`` [E] (buffer, selection only), ``w13`` [E, 2I, H] (gate rows first, or
    interleaved), ``w2`` [E, H, I], ``w13_bias`` [E, 2I], ``w2_bias`` [E, H], and
    ``shared_experts.{gate_proj,up_proj,down_proj,shared_expert_gate}.weight``.

    With ``quant=`` a scheme, ``w13`` and ``w2`` are buffers of codes in moekit's quantized layout
    (quant/spec.py) beside ``w13_scale`` / ``w2_scale`` (and ``*_zero``, ``*_g_idx``,
    ``*_global_scale``, static ``a13_scale`` / ``a2_scale`` where the scheme has them); a new layer
    holds random weights quantized on the fly. ``set_expert_weights`` quantizes float weights,
    ``set_quantized_experts`` takes a checkpoint's (see ``moekit.load``).

    With ``parallel=moekit.ExpertParallel(...)`` the expert tensors hold this rank's experts only
    (``local_experts``, in that order: docs/expert-parallel.md); the router and shared experts are
    whole on every rank, and every rank of the group must call each forward.
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
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        self.num_experts, self.top_k = num_experts, top_k
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.activation = parse_activation(activation)
        self.gate_up_layout = GateUpLayout(gate_up_layout)
        self.routing = RoutingConfig.parse(routing)
        self.quant = parse_quant(quant)
        self.quant_method = method_for(self.quant) if self.quant != "none" else None
        self.apply_router_weight_on_input = apply_router_weight_on_input
        self.router_dtype = router_dtype  # None: the router runs in the layer's dtype (DeepSeek-V3: fp32)
        self.backend_request = backend
        factory = {"dtype": dtype, "device": torch.device(device) if device is not None else default_device()}
        self._set_parallel(parallel, factory["device"])
        e_local = self.num_local_experts

        self.router = nn.Linear(hidden_size, num_experts, bias=router_bias, **factory)
        correction = torch.zeros(num_experts, dtype=torch.float32, device=factory["device"])
        self.register_buffer("correction_bias", correction if self.routing.correction_bias else None)
        gemm1_rows = 2 * intermediate_size if self.activation.gated else intermediate_size
        self._mma_order = {"w13": False, "w2": False}  # codes in the Triton backend's order (quant/code_order.py)
        if self.quant_method is None:
            self.w13 = nn.Parameter(torch.empty(e_local, gemm1_rows, hidden_size, **factory))
            self.w2 = nn.Parameter(torch.empty(e_local, hidden_size, intermediate_size, **factory))
        else:
            self._register_quantized(gemm1_rows, factory["device"])
        self.w13_bias = nn.Parameter(torch.empty(e_local, gemm1_rows, **factory)) if expert_bias else None
        self.w2_bias = nn.Parameter(torch.empty(e_local, hidden_size, **factory)) if expert_bias else None
        self.shared_experts = None
        if shared_intermediate_size is not None:
            check_positive_int("shared_intermediate_size", shared_intermediate_size)
            self.shared_experts = SharedExperts(
                hidden_size, shared_intermediate_size, self.activation, gate=shared_expert_gate, **factory
            )
        self.reset_parameters()
        self._decode_graphs = None  # use_decode_graphs()
        # Whatever changes the weights' storage (loading, .to()) composes the kernel anew.
        self.register_load_state_dict_post_hook(lambda module, _: module.compose_kernel())
        self.compose_kernel()
        self._constructed = True

    def _set_parallel(self, parallel: ExpertParallel | None, device) -> None:
        """Which experts this rank holds: all of them, or its slice of an expert-parallel group."""
        self.parallel = parallel
        self.load_stats = None  # ExpertLoadStats once track_expert_load is called
        if parallel is None:
            self.placement, self.local_experts = None, tuple(range(self.num_experts))
            return
        from moekit.ep.collectives import Collectives
        from moekit.ep.placement import ExpertPlacement

        self._comm = Collectives(parallel.group, parallel.timeout_s)
        self.placement = parallel.placement or ExpertPlacement.contiguous(self.num_experts, self._comm.world_size)
        if self.placement.num_logical != self.num_experts or self.placement.world_size != self._comm.world_size:
            raise ValueError(f"the expert placement holds {self.placement.num_logical} experts over "
                             f"{self.placement.world_size} ranks; this layer has {self.num_experts} experts and its "
                             f"group {self._comm.world_size} ranks")
        self.local_experts = self.placement.local_experts(self._comm.rank)
        if not self.local_experts:
            raise ValueError(f"rank {self._comm.rank} holds no expert in the placement")

    @property
    def num_local_experts(self) -> int:
        """Experts held on this device (all of them without expert parallelism)."""
        return len(self.local_experts)

    def _register_quantized(self, gemm1_rows: int, device) -> None:
        """Empty buffers for the scheme's tensors (filled by reset_parameters or a checkpoint)."""
        spec, e = self.quant_method.spec, self.num_local_experts
        shapes = (("w13", (gemm1_rows, self.hidden_size)), ("w2", (self.hidden_size, self.intermediate_size)))
        for name, (n, k) in shapes:
            self.quant_method.check_divisible(name, n, k)
            self.register_buffer(name, torch.empty(spec.data_shape(e, n, k), dtype=spec.data_dtype(), device=device))
            self.register_buffer(f"{name}_scale", torch.empty(spec.scale_shape(e, n, k), dtype=spec.scale_dtype(),
                                                              device=device))
            zero_dtype = torch.uint8 if spec.weight.packed else torch.int8
            self.register_buffer(f"{name}_zero", torch.empty(spec.scale_shape(e, n, k), dtype=zero_dtype, device=device)
                                 if spec.has_zero else None)
            self.register_buffer(f"{name}_g_idx", None)
            self.register_buffer(f"{name}_global_scale", torch.empty(e, device=device)
                                 if spec.scale_format.value == "e4m3" else None)
        for name in ("a13_scale", "a2_scale"):
            self.register_buffer(name, torch.ones((), device=device) if spec.act_static else None)

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (and the unquantized weights')."""
        return self.router.weight.dtype

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random weights scaled like nn.Linear, so a fresh layer gives non-trivial outputs."""
        self.router.weight.normal_(0.0, 1.0 / math.sqrt(self.hidden_size))
        for p in (self.router.bias, self.w13_bias, self.w2_bias):
            if p is not None:
                p.normal_(0.0, 0.02)
        if self.quant_method is None:
            self.w13.normal_(0.0, 1.0 / math.sqrt(self.hidden_size))
            self.w2.normal_(0.0, 1.0 / math.sqrt(self.intermediate_size))
            return
        if self.w13.is_meta:  # built on meta to take a checkpoint's weights (moekit.load): nothing to draw
            return
        for name, k in (("w13", self.hidden_size), ("w2", self.intermediate_size)):
            n = getattr(self, name).shape[1]
            device = self.router.weight.device
            self._set_quantized(name, self._quantize_by_expert(
                lambda e: torch.randn(1, n, k, device=device) / math.sqrt(k)))

    def _quantize_by_expert(self, expert_weight) -> QuantizedMatrix:
        """Quantize ``expert_weight(e)`` ([1, N, K] float) one expert at a time, so memory stays
        bounded at real shapes, and stack the results."""
        parts = [self.quant_method.quantize(expert_weight(e)) for e in range(self.num_local_experts)]
        return QuantizedMatrix(*(None if getattr(parts[0], name) is None else
                                 torch.cat([getattr(p, name) for p in parts]) for name in QuantizedMatrix.TENSORS))

    def _set_quantized(self, name: str, m: QuantizedMatrix) -> None:
        for suffix, t in (("", m.data), ("_scale", m.scale), ("_zero", m.zero), ("_g_idx", m.g_idx),
                          ("_global_scale", m.global_scale)):
            setattr(self, name + suffix, t)
        self._mma_order[name] = m.mma_order

    def _quantized(self, name: str) -> QuantizedMatrix:
        get = lambda suffix: getattr(self, name + suffix)  # noqa: E731
        return QuantizedMatrix(get(""), get("_scale"), get("_zero"), get("_g_idx"), get("_global_scale"),
                               mma_order=self._mma_order[name])

    def _local_slice(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's experts of a tensor indexed by all experts (dim 0); the tensor itself without
        expert parallelism."""
        if self.parallel is None:
            return t
        return t[torch.tensor(self.local_experts, device=t.device)]

    @torch.no_grad()
    def set_expert_weights(self, w13: torch.Tensor, w2: torch.Tensor) -> None:
        """Take float expert weights in moekit's layout (w13 [E, 2I, H], w2 [E, H, I]), for all E
        experts (an expert-parallel layer keeps its own); a quantized layer quantizes them with its
        scheme, one expert at a time."""
        check_shape("w13", w13, (self.num_experts,) + tuple(self.w13.shape[1:2]) + (self.hidden_size,))
        check_shape("w2", w2, (self.num_experts, self.hidden_size, self.intermediate_size))
        w13, w2 = self._local_slice(w13), self._local_slice(w2)
        if self.quant_method is None:
            self.w13.copy_(w13)
            self.w2.copy_(w2)
        else:
            device = self.w13.device
            for name, w in (("w13", w13), ("w2", w2)):
                self._set_quantized(name, self._quantize_by_expert(lambda e: w[e : e + 1].to(device)))
        self.compose_kernel()

    @torch.no_grad()
    def set_quantized_experts(self, w13: QuantizedMatrix, w2: QuantizedMatrix,
                              a13_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                              *, experts_are_local: bool = False) -> None:
        """Take expert weights already in this layer's scheme and moekit's quantized layout (what the
        checkpoint loaders produce), for all experts (an expert-parallel layer keeps its own), or with
        ``experts_are_local`` for this layer's own experts in its local order. Everything is checked
        before anything is assigned."""
        if self.quant_method is None:
            raise ValueError("set_quantized_experts needs a layer built with quant=<scheme>; this one is unquantized")
        rows = 2 * self.intermediate_size if self.activation.gated else self.intermediate_size
        count = self.num_local_experts if experts_are_local else self.num_experts
        self.quant_method.check("w13", w13, count, rows, self.hidden_size)
        self.quant_method.check("w2", w2, count, self.hidden_size, self.intermediate_size)
        device = self.router.weight.device
        pick = (lambda t: t) if experts_are_local else self._local_slice
        self._set_quantized("w13", w13.map(lambda t: pick(t).to(device)))
        self._set_quantized("w2", w2.map(lambda t: pick(t).to(device)))
        for name, scale in (("a13_scale", a13_scale), ("a2_scale", a2_scale)):
            setattr(self, name, None if scale is None else scale.to(device=device, dtype=torch.float32).reshape(()))
        self.compose_kernel()

    _EXPERT_TENSORS = ("w13", "w2", "w13_bias", "w2_bias") + tuple(
        f"{name}_{part}" for name in ("w13", "w2") for part in ("scale", "zero", "g_idx", "global_scale"))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """As nn.Module's, with word-padded scales (quant/scale_layout.py) given contiguous: a state
        dict holds plain tensors (safetensors refuses strided ones); loading lays them out again."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in ("w13_scale", "w2_scale"):
            t = destination.get(prefix + name)
            if t is not None and not t.is_contiguous():
                destination[prefix + name] = t.contiguous()
        for name, mma in self._mma_order.items():  # codes in plain order, whatever the backend keeps
            if mma and prefix + name in destination:
                destination[prefix + name] = to_plain_order(destination[prefix + name])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """An expert-parallel layer takes a state dict of all E experts (a single-device layer's, or a
        checkpoint's) and keeps its own; its own ``state_dict()`` holds only those."""
        if self.parallel is not None:
            sliced = {}
            for name in self._EXPERT_TENSORS:
                t = state_dict.get(prefix + name)
                if t is not None and t.dim() > 0 and t.shape[0] == self.num_experts:
                    sliced[prefix + name] = self._local_slice(t)
            if sliced:
                state_dict = {**state_dict, **sliced}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for name in self._mma_order:  # a state dict's codes are in plain order
            if prefix + name in state_dict:
                self._mma_order[name] = False

    def problem(self) -> MoEProblem:
        return MoEProblem(
            num_experts=self.num_local_experts,
            top_k=self.top_k,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            dtype=self.dtype,
            device_type=self.router.weight.device.type,
            activation=self.activation,
            gate_up_layout=self.gate_up_layout,
            quant=self.quant,
            has_bias=self.w13_bias is not None,
            apply_router_weight_on_input=self.apply_router_weight_on_input,
            parallel=ParallelLayout.SINGLE if self.parallel is None else ParallelLayout.EXPERT,
        )

    def compose_kernel(self) -> None:
        """Choose the experts backend for the current weights and convert them to its format.

        Skipped while the weights are on the meta device: a layer built there (no memory) to take
        over existing tensors composes once they are assigned."""
        if self.w13.is_meta:
            return
        if self.quant_method is None:
            weights = ExpertWeights(self.w13, self.w2, self.w13_bias, self.w2_bias)
        else:
            rows = 2 * self.intermediate_size if self.activation.gated else self.intermediate_size
            for name in ("w13_scale", "w2_scale"):  # one-byte scales: rows on word boundaries (scale_layout.py)
                setattr(self, name, word_padded(getattr(self, name)))
            w13, w2 = self._quantized("w13"), self._quantized("w2")
            self.quant_method.check("w13", w13, self.num_local_experts, rows, self.hidden_size)
            self.quant_method.check("w2", w2, self.num_local_experts, self.hidden_size, self.intermediate_size)
            weights = ExpertWeights(w13, w2, self.w13_bias, self.w2_bias, quant=self.quant_method.spec,
                                    a13_scale=self.a13_scale, a2_scale=self.a2_scale)
        problem = self.problem()
        prepare_finalize, parallel_choice = None, None
        if self.parallel is not None:
            from moekit.ep.selection import build_prepare_finalize

            prepare_finalize, parallel_choice = build_prepare_finalize(self.parallel, self.placement, self._comm,
                                                                       self.w13.device)
        self.kernel, selection = build_kernel(problem, weights, current_environment(), self.backend_request,
                                              prepare_finalize, own_codes=True)
        if self.quant_method is not None:  # the backend's conversion may have reordered the codes in place
            self._mma_order = {"w13": self.kernel.weights.w13.mma_order, "w2": self.kernel.weights.w2.mma_order}
        if self._decode_graphs is not None:  # they read the old kernel's tensors
            self._decode_graphs.reset()
        self._explanation = Explanation(problem, selection, self.kernel.describe(), parallel_choice,
                                        self._tiles_key(problem, selection))

    def _tiles_key(self, problem, selection):
        """The tile-table key explain() shows the Triton backend's tiles by (None elsewhere)."""
        if selection.chosen.name != "triton" or self.w13.device.type != "cuda":
            return None
        from moekit.triton_ops.tile_configs import TableKey

        return TableKey(torch.cuda.get_device_name(self.w13.device), problem.num_experts, problem.top_k,
                        problem.hidden_size, problem.intermediate_size, problem.dtype, problem.activation.gated,
                        problem.quant)

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        if self.__dict__.get("_constructed"):  # .to()/.to_empty() after __init__
            self.compose_kernel()
        return module

    def track_expert_load(self, window: int = 128) -> None:
        """Count token pairs per expert over the last ``window`` forward passes (for ``rebalance``)."""
        from moekit.ep.eplb import ExpertLoadStats

        self.load_stats = ExpertLoadStats(self.num_experts, window, self.router.weight.device)

    def rebalance(self, slots_per_rank: int | None = None):
        """Expert-parallel layers: place the experts anew from the tracked load, with redundant
        replicas of hot experts when ``slots_per_rank`` exceeds E / ranks, moving weights between
        ranks (no checkpoint read). A collective: every rank of the group calls it. Returns the
        (before, after) imbalance, max/mean rank load over the window."""
        from moekit.ep.rebalance_layer import rebalance_layer

        return rebalance_layer(self, slots_per_rank)

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
        graphs = self._decode_graphs
        if graphs is not None and graphs.applies(tokens):
            out, topk_weights, topk_ids, owned = graphs.run(self, tokens)
            if not owned:  # the graph's buffers, overwritten by its next replay: copies
                out = out.clone()
                if return_routing:
                    topk_weights, topk_ids = topk_weights.clone(), topk_ids.clone()
        else:
            out, topk_weights, topk_ids = self.forward_tokens(tokens)
        if self.load_stats is not None:
            self.load_stats.record(topk_ids)
        out = out.reshape(x.shape)
        return (out, (topk_weights, topk_ids)) if return_routing else out

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens [T, H] -> (out [T, H], topk_weights, topk_ids): routing and experts, eagerly (what
        a decode graph captures)."""
        topk_weights, topk_ids = self.route(tokens)
        if self.parallel is not None and self.parallel.max_tokens_per_chunk is not None:
            out = self._forward_in_chunks(tokens, topk_weights, topk_ids)
        else:
            out = self.kernel.apply(tokens, topk_weights, topk_ids, shared_experts=self.shared_experts)
        return out, topk_weights, topk_ids

    def use_decode_graphs(self, max_tokens: int | None = 16) -> None:
        """Replay forwards of up to ``max_tokens`` tokens from CUDA graphs, one per token count,
        captured on first use (moekit/decode_graphs.py: when they apply, what they skip); None
        switches them off. CUDA layers: single-device, or expert-parallel with a fixed capacity."""
        if max_tokens is None:
            self._decode_graphs = None
            return
        from moekit.ep.all_to_all_padded import PaddedAllToAllPrepareFinalize

        if self.parallel is not None and not (isinstance(self.kernel.prepare_finalize, PaddedAllToAllPrepareFinalize)
                                              and self.parallel.max_tokens_per_chunk is None):
            raise ValueError(f"decode graphs need a forward without host syncs: this expert-parallel layer moves "
                             f"tokens by {self.kernel.prepare_finalize.name}"
                             f"{' in chunks' if self.parallel.max_tokens_per_chunk else ''}; give ExpertParallel "
                             "max_tokens_per_rank (and no max_tokens_per_chunk) for the fixed-capacity all-to-all")
        if self.router.weight.device.type != "cuda":
            raise ValueError(f"decode graphs are CUDA graphs: this layer is on {self.router.weight.device}")
        from moekit.decode_graphs import DecodeGraphs

        self._decode_graphs = DecodeGraphs(max_tokens)

    def _forward_in_chunks(self, tokens, topk_weights, topk_ids) -> torch.Tensor:
        """Expert parallel with bounded buffers: rounds of at most max_tokens_per_chunk tokens per
        rank; every rank runs as many rounds as the rank with the most tokens (empty ones after its
        own tokens run out)."""
        chunk = self.parallel.max_tokens_per_chunk
        rounds = self._comm.max_over_ranks(-(-tokens.shape[0] // chunk), tokens.device)
        outs = [self.kernel.apply(tokens[r * chunk:(r + 1) * chunk], topk_weights[r * chunk:(r + 1) * chunk],
                                  topk_ids[r * chunk:(r + 1) * chunk], shared_experts=self.shared_experts)
                for r in range(rounds)]
        return torch.cat(outs) if outs else self.kernel.apply(tokens, topk_weights, topk_ids,
                                                              shared_experts=self.shared_experts)

    def _check_input(self, x) -> None:
        check_tensor("x", x, dtypes=(self.dtype,))
        if x.dim() not in (2, 3) or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [T, {self.hidden_size}] or [B, S, {self.hidden_size}], got {tuple(x.shape)}")
        if x.device != self.w13.device:
            raise ValueError(f"x is on {x.device} but the layer's weights are on {self.w13.device}")

    def extra_repr(self) -> str:
        held = f" ({self.num_local_experts} on this rank)" if self.parallel is not None else ""
        return (f"experts={self.num_experts}{held}, top_k={self.top_k}, hidden={self.hidden_size}, "
                f"intermediate={self.intermediate_size}, activation={self.activation.name}, "
                f"quant={self.quant}, backend={self._explanation.backend if 'kernel' in self.__dict__ else None}")
