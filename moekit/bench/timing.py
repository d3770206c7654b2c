"""Median device time of one MoE variant: ``triton.testing.do_bench`` (CUDA events, L2 flushed
before each run) over input sets rotated from run to run, either eagerly or by replaying one CUDA
graph per input set, as inference engines decode."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# do_bench takes milliseconds of warmup and of timed runs, not counts: a 30 ms call gets ~3 timed
# runs and a 30 µs one thousands, which keeps the slow eager baselines at large token counts short.
WARMUP_MS = 25
REP_MS = 100
EAGER_WARMUP_MS = 10  # eager variants run long at large token counts; their warmup matters less


def method() -> dict:
    """How the medians are taken, to record beside them."""
    return {"timer": "triton.testing.do_bench, return_mode='median' (CUDA events; L2 flushed before each run)",
            "warmup_ms": WARMUP_MS, "rep_ms": REP_MS, "eager_warmup_ms": EAGER_WARMUP_MS}


def median_ms(fn: Callable[[], object], warmup_ms: float = WARMUP_MS, rep_ms: float = REP_MS) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA device."""
    from triton.testing import do_bench  # lazily: ``import moekit`` must not load triton

    ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    torch.cuda.synchronize()  # an asynchronous kernel error surfaces here, in this variant's cell
    return float(ms)


class EagerRotation:
    """Each call runs ``fn`` on the next input set, round-robin, so successive runs read different
    experts' weights instead of what the previous run left in L2."""

    mode = "eager"

    def __init__(self, fn: Callable, sets: Sequence):
        self.fn, self.sets, self.next = fn, list(sets), 0

    def __call__(self) -> None:
        self.fn(self.sets[self.next])
        self.next = (self.next + 1) % len(self.sets)

    def first_output(self) -> torch.Tensor:
        """The output for input set 0 (a fresh allocation: it cannot be poisoned beforehand)."""
        out = self.fn(self.sets[0])
        if out.is_cuda:
            torch.cuda.synchronize()
        return out


class GraphRotation:
    """One captured CUDA graph per input set; each call replays the next one."""

    mode = "graph"

    def __init__(self, graphs: list[torch.cuda.CUDAGraph], outputs: list[torch.Tensor]):
        self.graphs, self.outputs, self.next = graphs, outputs, 0

    def __call__(self) -> None:
        self.graphs[self.next].replay()
        self.next = (self.next + 1) % len(self.graphs)

    def first_output(self) -> torch.Tensor:
        """Poison graph 0's static output with NaN, replay graph 0 alone and return that output: an
        element the graph does not write stays NaN. (Graphs share one memory pool: read it before
        replaying any other graph.)"""
        out = self.outputs[0]
        out.fill_(float("nan"))
        self.graphs[0].replay()
        torch.cuda.synchronize()
        return out


class CaptureError(RuntimeError):
    """``fn`` ran eagerly but could not be captured in a CUDA graph."""


def capture_rotation(fn: Callable, sets: Sequence) -> GraphRotation:
    """Capture ``fn(set)`` for every input set into graphs sharing one memory pool.

    ``fn`` first runs eagerly on every set on a side stream, so that JIT compilation, autotuning,
    library handles and lazy allocations happen outside the capture; an error there propagates as
    it is (the variant fails). A failure during capture raises ``CaptureError``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for inputs in sets:
            fn(inputs)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    pool = torch.cuda.graph_pool_handle()  # the graphs run one at a time, so they may share scratch
    stream = torch.cuda.current_stream()
    graphs, outputs = [], []
    try:
        for inputs in sets:
            graphs.append(torch.cuda.CUDAGraph())
            with torch.cuda.graph(graphs[-1], pool=pool):
                outputs.append(fn(inputs))
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - any capture failure is reported, not fatal to the run
        message = describe_error(e)
        # torch.cuda.graph leaves its capture stream current when ending the capture raises.
        torch.cuda.set_stream(stream)
        graphs.clear()
        outputs.clear()
        settle()
        raise CaptureError(message) from e
    return GraphRotation(graphs, outputs)


def settle() -> None:
    """After a failure, wait for the device so that a later cell starts clean; a sticky CUDA error
    (an illegal address) will then show in every later cell too, which the report makes visible."""
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - already reported by the caller
        pass
    torch.cuda.empty_cache()


def describe_error(error: BaseException, limit: int = 300) -> str:
    """One line: the first line of the original exception, then of each raised while handling it
    (a failed capture raises first where the host synced, then again when the capture ends)."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    parts = []
    for e in reversed(chain):
        line = (str(e).strip().splitlines() or [""])[0]
        part = f"{type(e).__name__}: {line}" if line else type(e).__name__
        if part not in parts:
            parts.append(part[:limit])
    return " | then ".join(parts)
