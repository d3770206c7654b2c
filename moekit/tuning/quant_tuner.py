"""Search tile configs of the Triton experts backend for one shape with QUANTIZED experts, per token
bucket; the table is keyed by ``TableKey(..., quant=scheme)``.

It goes only through the backend's public call, ``TritonExperts().apply(..., tiles=candidate)``, never
the kernels' launch functions (the quantized kernels own those and may change them): so each
candidate is timed as a whole experts forward replayed from a CUDA graph (weight-only schemes at
about a row per expert also try the decode GEMV's row blocks of 1 and 2). Per bucket and row block
(block_m), gemm1's tiles are searched with gemm2's held at the default heuristic's, then gemm2's
with gemm1's best; the block_m whose best forward is fastest wins. Every candidate's output is
checked against the reference backend on the same quantized weights (activation quantization
included): a candidate that computes a wrong result, or that the backend refuses, is no candidate.
The quantized weights are built once per shape (random, quantized one expert at a time)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from moekit.experts.base import ExpertWeights
from moekit.tolerance import relative_error
from moekit.triton_ops.tile_configs import GEMV_MAX_BLOCK_M, ExpertsTiles, GemmTiles, TableKey, default_tiles
from moekit.triton_ops.weight_only_gemv import gemv_supports_scheme
from moekit.tuning.search_space import gemm_candidates, quantized_block_m_candidates
from moekit.tuning.timing import graph_replay_ms
from moekit.tuning.tuner import DEFAULT_BUCKETS, BucketResult, TuneShape, routed_batch


@dataclass
class QuantProblem:
    """The shape's quantized weights (built once) and how to check a forward on them."""

    shape: TuneShape
    scheme: str
    layer: object  # the moekit.MoE holding the quantized weights (its oracle is not used)
    weights: ExpertWeights = field(init=False)

    def __post_init__(self):
        q = self.layer
        self.weights = ExpertWeights(q._quantized("w13"), q._quantized("w2"), q.w13_bias, q.w2_bias,
                                     quant=q.quant_method.spec, a13_scale=q.a13_scale, a2_scale=q.a2_scale)

    @classmethod
    def build(cls, shape: TuneShape, scheme: str, device) -> QuantProblem:
        import moekit

        layer = moekit.MoE(shape.num_experts, shape.top_k, shape.hidden_size, shape.intermediate_size,
                           activation=shape.activation, quant=scheme, dtype=shape.dtype, device=device,
                           gate_up_layout=shape.gate_up_layout, expert_bias=shape.bias).requires_grad_(False)
        return cls(shape, layer.quant, layer)

    def reference(self, x, topk_weights, topk_ids) -> torch.Tensor:
        from moekit.bench.quant_reference import quantized_reference

        return quantized_reference(self.layer, x, topk_weights, topk_ids)

    @property
    def tolerance(self) -> float:
        from moekit.bench.quant_reference import quant_tolerance

        return quant_tolerance(self.weights.quant)


def tune_quant_shape(shape: TuneShape, scheme: str, buckets=DEFAULT_BUCKETS, device: str = "cuda",
                     on_result: Callable[[list[BucketResult]], None] | None = None, compile_workers: int = 8,
                     backend=None, bench_ms: Callable[[Callable[[], object]], float] = graph_replay_ms,
                     problem: QuantProblem | None = None) -> list[BucketResult]:
    """Best tiles per bucket for ``scheme``'s forward. ``backend`` (default ``TritonExperts()``) and
    ``bench_ms`` are there for the CPU tests; ``on_result`` gets the results so far after each bucket."""
    if backend is None:
        from moekit.experts.triton_fused import TritonExperts

        backend = TritonExperts()
    problem = problem or QuantProblem.build(shape, scheme, device)
    spec = problem.weights.quant
    # default_tiles reads only the shape and dtype of the key, never the device (nor a table).
    key = TableKey("", shape.num_experts, shape.top_k, shape.hidden_size, shape.intermediate_size, shape.dtype,
                   shape.activation.gated, problem.scheme)
    elem_bytes = torch.empty((), dtype=shape.dtype).element_size()
    gemv = gemv_supports_scheme(spec, shape.hidden_size, shape.intermediate_size)
    results = []
    for tokens in buckets:
        x, topk_weights, topk_ids = routed_batch(shape, tokens, problem.weights.w2.data.device)
        ref = problem.reference(x, topk_weights, topk_ids)

        def forward(tiles: ExpertsTiles):
            return backend.apply(x, topk_weights, topk_ids, problem.weights, shape.activation, shape.gate_up_layout,
                                 tiles=tiles)

        search = _Search(forward, ref, problem.tolerance, bench_ms, compile_workers)
        defaults = default_tiles(key, tokens)
        best = None
        for block_m in quantized_block_m_candidates(tokens, shape.top_k, shape.num_experts, gemv):
            held_gemm2 = _held_gemm2(defaults, block_m, spec.weight_only)
            g1 = search.best(lambda t, bm=block_m, g2=held_gemm2: ExpertsTiles(bm, t, g2),
                             gemm_candidates(block_m, shape.activation.gated, elem_bytes, spec))
            g2 = search.best(lambda t, bm=block_m, g1=g1: ExpertsTiles(bm, g1.tiles.gemm1, t),
                             gemm_candidates(block_m, False, elem_bytes, spec))
            if best is None or g2.us < best.us:
                best = g2
        report = {"forward": round(best.us, 2), "rel_error": best.rel_error, **search.rejections()}
        results.append(BucketResult(tokens, best.tiles, None, None, report, forward_us=best.us))
        if on_result:
            on_result(results)
    return results


def _held_gemm2(defaults: ExpertsTiles, block_m: int, weight_only: bool) -> GemmTiles:
    """gemm2's tiles while gemm1's are searched: the default's when it runs the same path (the
    decode GEMV for block_m <= GEMV_MAX_BLOCK_M, the tensor-core loop above), else a sound one of
    that path. Weight-only tensor-core tiles are swapped ones: 4-bit codes the layer keeps in MMA
    order (quant/code_order.py) run no other tensor-core loop."""
    gemv = block_m <= GEMV_MAX_BLOCK_M
    if (defaults.block_m <= GEMV_MAX_BLOCK_M) == gemv:
        return defaults.gemm2
    if gemv:
        return GemmTiles(32, 256, 1, 4, 1)
    return GemmTiles(64, 128, 1, 4, 3, swap_ab=True) if weight_only else GemmTiles(64, 128, 1, 4, 2)


@dataclass(frozen=True)
class _Timed:
    tiles: ExpertsTiles
    us: float
    rel_error: float


class _Search:
    """Times and checks candidates of one bucket; remembers why candidates were rejected."""

    def __init__(self, forward, ref, tolerance: float, bench_ms, workers: int):
        self.forward, self.ref, self.tolerance, self.bench_ms, self.workers = forward, ref, tolerance, bench_ms, workers
        self.wrong, self.failed, self.first_error = 0, 0, None

    def best(self, make: Callable[[GemmTiles], ExpertsTiles], candidates: list[GemmTiles]) -> _Timed:
        """The fastest correct forward over ``make(candidate)``."""
        configs = [make(t) for t in candidates]
        self._compile_ahead(configs)
        best = None
        for tiles in configs:
            try:
                rel = relative_error(self.forward(tiles), self.ref)
                if not rel <= self.tolerance:  # NaN fails too
                    self.wrong += 1
                    continue
                us = 1e3 * self.bench_ms(lambda: self.forward(tiles))
            except Exception as e:  # noqa: BLE001 - out of resources, or tiles the quantized kernel refuses
                self.failed += 1
                self.first_error = self.first_error or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                continue
            if best is None or us < best.us:
                best = _Timed(tiles, us, rel)
        if best is None:
            raise RuntimeError(f"no tile candidate ran correctly for this shape ({self.wrong} wrong, {self.failed} "
                               f"failed; first failure: {self.first_error})")
        return best

    def rejections(self) -> dict:
        out = {"rejected_wrong": self.wrong, "rejected_failed": self.failed}
        if self.first_error:
            out["first_failure"] = self.first_error[:200]
        return out

    def _compile_ahead(self, configs: list[ExpertsTiles]) -> None:
        """Run every candidate once from a thread pool so the compiles overlap; errors surface in the
        serial pass, where they are handled."""
        if self.workers <= 1:
            return

        def attempt(tiles):
            try:
                self.forward(tiles)
            except Exception:  # noqa: BLE001
                pass

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            list(pool.map(attempt, configs))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
