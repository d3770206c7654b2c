"""Decode graphs (MoE.use_decode_graphs) on the GPU: replays equal the eager forward bit for bit, at
real shapes, for every token count up to the limit; outputs are not aliased between calls; replaced
weights drop the graphs; autograd, larger batches and return_routing behave."""

import pytest
import torch

import moekit
from moekit.cli.presets import PRESETS


def _layer(name):
    torch.manual_seed(0)
    return moekit.MoE(**PRESETS[name].layer_kwargs(), dtype=torch.bfloat16, device="cuda")


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "deepseek-v3", "gpt-oss-120b"])
def test_replays_equal_eager_and_are_not_aliased(name):
    layer = _layer(name)
    with torch.no_grad():
        xs = [torch.randn(t, layer.hidden_size, device="cuda", dtype=torch.bfloat16) for t in (1, 3, 8, 1, 3)]
        eager = [layer(x) for x in xs]
        layer.use_decode_graphs(8)
        got = [layer(x) for x in xs]  # the second 1- and 3-token calls replay the graphs captured by the first
        assert sorted(layer._decode_graphs.graphs) == [1, 3, 8]
        for g, e in zip(got, eager):
            assert torch.equal(g, e)
        again = layer(xs[0])
        assert torch.equal(got[0], eager[0]) and torch.equal(again, eager[0])  # earlier outputs untouched
        out, (w, ids) = layer(xs[1], return_routing=True)
        w_e, ids_e = layer.route(xs[1])
        assert torch.equal(out, eager[1]) and torch.equal(w, w_e) and torch.equal(ids, ids_e)


def test_new_weights_drop_the_graphs():
    layer = _layer("qwen3-30b-a3b")
    x = torch.randn(2, layer.hidden_size, device="cuda", dtype=torch.bfloat16)
    layer.use_decode_graphs(4)
    with torch.no_grad():
        before = layer(x)
        state = {k: (v * 1.5 if k in ("w13", "router.weight") else v) for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)
        assert layer._decode_graphs.graphs == {}
        after = layer(x)
        layer.use_decode_graphs(None)
        assert torch.equal(after, layer(x)) and not torch.equal(after, before)
        layer.use_decode_graphs(4)
        layer(x)
        layer.router.weight = torch.nn.Parameter(layer.router.weight * 2)  # replaced outside moekit's loaders
        replaced = layer(x)
        layer.use_decode_graphs(None)
        assert torch.equal(replaced, layer(x))


def test_graphs_only_without_autograd_and_up_to_the_limit():
    layer = _layer("qwen3-30b-a3b")
    layer.use_decode_graphs(4)
    x = torch.randn(2, layer.hidden_size, device="cuda", dtype=torch.bfloat16)
    layer(x)  # autograd on: eager
    with torch.no_grad():
        layer(torch.randn(5, layer.hidden_size, device="cuda", dtype=torch.bfloat16))  # past the limit: eager
    assert layer._decode_graphs.graphs == {}
    with torch.inference_mode():
        layer(x)
    assert list(layer._decode_graphs.graphs) == [2]
