"""Search tile configs of the Triton experts kernels for one shape, per token-count bucket.

For each bucket and each candidate row block (block_m) the two GEMMs are timed apart on the same
aligned rows (gemm1's best tiles, then gemm2's), and the block_m with the smallest sum wins. The
compiled kernel's registers and spills are kept with the result, so a slow config can be read off
the table. Candidates are compiled ahead in a thread pool (the compiler runs outside the GIL),
then timed one by one, each replayed from a CUDA graph (timing.py: eager timing measured launch
overhead at decode)."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from moekit.activations import Activation, GateUpLayout
from moekit.routing import RoutingConfig, route_with_config
from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles
from moekit.tuning.search_space import block_m_candidates, gemm_candidates
from moekit.tuning.timing import graph_replay_ms

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class TuneShape:
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    dtype: torch.dtype
    activation: Activation
    gate_up_layout: GateUpLayout = GateUpLayout.CONCATENATED
    bias: bool = False
    routing: RoutingConfig | None = None  # the model's routing (None: uniform random top-k)


@dataclass
class BucketResult:
    tokens: int
    tiles: ExpertsTiles
    gemm1_us: float | None  # None where the GEMMs are not timed apart (quantized: whole forwards)
    gemm2_us: float | None
    report: dict = field(default_factory=dict)  # registers / spills of the chosen kernels
    forward_us: float | None = None  # the whole experts forward with these tiles (quantized tuning)


class _Problem:
    """Weights (allocated once per shape) and one bucket's routed batch."""

    def __init__(self, shape: TuneShape, device: str):
        E, H, I = shape.num_experts, shape.hidden_size, shape.intermediate_size
        rows = 2 * I if shape.activation.gated else I
        self.shape = shape
        self.w13 = (torch.randn(E, rows, H, device=device) / math.sqrt(H)).to(shape.dtype)
        self.w2 = (torch.randn(E, H, I, device=device) / math.sqrt(I)).to(shape.dtype)
        self.b13 = (0.1 * torch.randn(E, rows, device=device)).to(shape.dtype) if shape.bias else None
        self.b2 = (0.1 * torch.randn(E, H, device=device)).to(shape.dtype) if shape.bias else None

    def batch(self, tokens: int):
        return routed_batch(self.shape, tokens, self.w2.device)


def routed_batch(s: TuneShape, tokens: int, device):
    """Tokens routed as the model routes them, so expert loads are as skewed as they would be
    (grouped top-k with a correction bias concentrates tokens on fewer experts): (x, weights, ids)."""
    x = torch.randn(tokens, s.hidden_size, device=device).to(s.dtype)
    logits = torch.randn(tokens, s.num_experts, device=device)
    if s.routing is None:
        weights, ids = logits.topk(s.top_k, dim=-1)
        return x, weights.float().softmax(-1).contiguous(), ids.to(torch.int32).contiguous()
    # A trained model's correction bias is far from zero (the bench draws it the same way).
    bias = 0.1 * torch.randn(s.num_experts, device=device) if s.routing.correction_bias else None
    return (x, *route_with_config(logits, s.top_k, s.routing, bias))


def tune_shape(shape: TuneShape, buckets=DEFAULT_BUCKETS, device: str = "cuda",
               on_result: Callable[[list[BucketResult]], None] | None = None,
               compile_workers: int = 8,
               bench_ms: Callable[[Callable[[], object]], float] = graph_replay_ms) -> list[BucketResult]:
    """Best tiles per bucket. ``on_result`` gets the results so far after each bucket (progress bars,
    and tables written as they grow, so an interrupted run keeps what it measured); ``bench_ms``
    times one candidate (there for the CPU tests)."""
    from moekit.triton_ops.align import align_pairs_by_expert
    from moekit.triton_ops.experts_kernels import launch_gemm1

    problem = _Problem(shape, device)
    results = []
    for tokens in buckets:
        x, topk_weights, topk_ids = problem.batch(tokens)
        best = None
        for block_m in block_m_candidates(tokens, shape.top_k, shape.num_experts):
            aligned = align_pairs_by_expert(topk_ids, shape.num_experts, block_m)
            g1 = _best("gemm1", lambda t: _run_gemm1(problem, x, aligned, t),
                       gemm_candidates(block_m, shape.activation.gated), compile_workers, bench_ms)
            activated = launch_gemm1(x, problem.w13, problem.b13, aligned, shape.top_k, shape.activation,
                                     shape.gate_up_layout, g1[0])
            out_rows = torch.empty(tokens * shape.top_k, shape.hidden_size, dtype=shape.dtype, device=device)
            g2 = _best("gemm2", lambda t: _run_gemm2(problem, activated, topk_weights, aligned, out_rows, t),
                       gemm_candidates(block_m, gated=False), compile_workers, bench_ms)
            total = g1[1] + g2[1]
            if best is None or total < best[0]:
                best = (total, ExpertsTiles(block_m, g1[0], g2[0]), g1, g2)
        _, tiles, g1, g2 = best
        results.append(BucketResult(tokens, tiles, g1[1], g2[1], {"gemm1": g1[2], "gemm2": g2[2]}))
        if on_result:
            on_result(results)
    return results


def _run_gemm1(problem: _Problem, x, aligned, tiles: GemmTiles):
    from moekit.triton_ops.experts_kernels import launch_gemm1

    s = problem.shape
    return launch_gemm1(x, problem.w13, problem.b13, aligned, s.top_k, s.activation, s.gate_up_layout, tiles)


def _run_gemm2(problem: _Problem, activated, topk_weights, aligned, out_rows, tiles: GemmTiles):
    from moekit.triton_ops.experts_kernels import launch_gemm2

    return launch_gemm2(activated, problem.w2, problem.b2, topk_weights, aligned, out_rows, tiles)


def _best(name: str, run: Callable[[GemmTiles], object], candidates: list[GemmTiles], workers: int,
          bench_ms: Callable[[Callable[[], object]], float]):
    """(tiles, median µs, compiler report) of the fastest candidate that compiles and runs."""
    from moekit.triton_ops.experts_kernels import LAST_COMPILED

    _compile_ahead(run, candidates, workers)
    best = None
    for tiles in candidates:
        try:
            run(tiles)
            kernel = LAST_COMPILED.get(name)
            us = 1e3 * bench_ms(lambda: run(tiles))
        except Exception as e:  # out of resources for this shape: not a candidate
            if "OutOfResources" not in type(e).__name__ and "out of resource" not in str(e).lower():
                raise
            continue
        if best is None or us < best[1]:
            report = {"n_regs": getattr(kernel, "n_regs", None), "n_spills": getattr(kernel, "n_spills", None)}
            best = (tiles, us, report)
    if best is None:
        raise RuntimeError("no tile candidate compiled for this shape")
    return best


def _compile_ahead(run, candidates, workers: int) -> None:
    """Launch every candidate once from a thread pool so the compiles overlap; errors surface later
    in the serial pass, where they are handled."""
    if workers <= 1:
        return
    def attempt(tiles):
        try:
            run(tiles)
        except Exception:
            pass
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(attempt, candidates))
    torch.cuda.synchronize()
