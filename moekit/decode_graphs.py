"""Decode-sized forwards replayed from CUDA graphs (``MoE.use_decode_graphs``).

An eager forward of a few tokens costs far more host time than GPU time: routing, alignment, the
two GEMMs and the top-k sum are 6-10 launches plus Python: 180-570 µs of host time per layer at 1-8
tokens on the lent H200 against 40-1250 µs on the GPU (docs/benchmarks.md). With decode graphs on, the
first forward of each token count T <= ``max_tokens`` runs eagerly (on a side stream, which warms
the kernels up) and is then captured into a CUDA graph; later forwards of that T copy the tokens
into the graph's input, replay it and clone its output: three host calls. An expert-parallel layer
with a fixed capacity (``max_tokens_per_rank``) captures its dispatch and combine too: every call
still runs one set of collectives, so ranks may capture at different calls and token counts.

What is captured: router, routing, the routed and shared experts. Graphs are used only for CUDA
tensors, without autograd (``torch.no_grad()`` or inference mode), outside torch.compile and outside
another capture; any other forward runs eagerly as before. The host-side checks (ids in range, NaN
logits) do not run on replays. A graph reads the tensors it was captured with: composing the
kernel anew (loading, ``.to()``, ``set_expert_weights``, a rebalance) or replacing any parameter or
buffer of the layer by another tensor object drops the graphs, captured again on next use;
in-place updates of the tensors are read by the replays. (Reassigning a parameter's ``.data``
outside moekit is not seen: call ``use_decode_graphs`` again after it.)"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # the graph's input [T, H] (tokens are copied in before each replay)
    out: torch.Tensor  # its outputs, overwritten by every replay
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor


class DecodeGraphs:
    def __init__(self, max_tokens: int):
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.graphs: dict[int, _Captured] = {}
        self._pool = None  # one memory pool for all token counts (replays never overlap)
        self._slots: tuple = ()  # the layer's tensors the graphs were captured with, where they sit

    def reset(self) -> None:
        """Drop every graph and their memory pool (the layer's kernel or device changed)."""
        self.graphs.clear()
        self._pool, self._slots = None, ()

    def applies(self, tokens: torch.Tensor) -> bool:
        return (tokens.is_cuda and 0 < tokens.shape[0] <= self.max_tokens and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing())

    def run(self, layer, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """This forward's (out, topk_weights, topk_ids, owned): replayed from the graph of its token
        count, or, the first time, computed eagerly and then captured (each call runs the layer's
        work once, so expert-parallel peers see one set of collectives per forward). ``owned``
        False: the tensors are the graph's buffers, overwritten by the next replay."""
        if not _unchanged(self._slots):
            self.graphs.clear()
            self._slots = _tensor_slots(layer)
        captured = self.graphs.get(tokens.shape[0])
        if captured is None:
            out, topk_weights, topk_ids = self._warm_up(layer, tokens)
            self.graphs[tokens.shape[0]] = self._capture(layer, tokens)
            return out, topk_weights, topk_ids, True
        captured.x.copy_(tokens)
        captured.graph.replay()
        return captured.out, captured.topk_weights, captured.topk_ids, False

    @staticmethod
    def _warm_up(layer, tokens: torch.Tensor):
        """The forward, eagerly, on a side stream (compiles kernels and fills caches off the stream
        that will be captured)."""
        main = torch.cuda.current_stream(tokens.device)
        side = torch.cuda.Stream(tokens.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            results = layer.forward_tokens(tokens)
        main.wait_stream(side)
        for t in results:  # allocated on the side stream, read on the main one
            t.record_stream(main)
        return results

    def _capture(self, layer, tokens: torch.Tensor) -> _Captured:
        x = tokens.clone()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out, topk_weights, topk_ids = layer.forward_tokens(x)
        return _Captured(graph, x, out, topk_weights, topk_ids)


def _tensor_slots(layer) -> tuple:
    """Every parameter and buffer of the layer with the dict it sits in: a tensor replaced by another
    object shows as a changed entry (a check of ~10 entries costs ~1 µs; walking ``parameters()``
    costs ~12)."""
    return tuple((tensors, name, t) for module in layer.modules()
                 for tensors in (module._parameters, module._buffers) for name, t in tensors.items() if t is not None)


def _unchanged(slots) -> bool:
    return bool(slots) and all(tensors.get(name) is t for tensors, name, t in slots)
