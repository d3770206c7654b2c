"""Decode graphs' contract on the CPU (the replays themselves are CUDA: tests_gpu/test_decode_graphs_gpu.py)."""

import pytest
import torch

import moekit
from moekit.decode_graphs import DecodeGraphs


def _layer():
    torch.manual_seed(0)
    return moekit.MoE(num_experts=6, top_k=2, hidden_size=32, intermediate_size=16, dtype=torch.float32,
                      shared_intermediate_size=8)


def test_a_cpu_layer_refuses_decode_graphs():
    with pytest.raises(ValueError, match="CUDA graphs: this layer is on cpu"):
        _layer().use_decode_graphs(8)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_the_token_limit_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        DecodeGraphs(bad)


def test_graphs_never_apply_to_cpu_tokens():
    graphs = DecodeGraphs(16)
    with torch.no_grad():
        assert not graphs.applies(torch.randn(4, 32))


def test_forward_is_forward_tokens_plus_shape_and_routing():
    layer = _layer()
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        out, (w, ids) = layer(x, return_routing=True)
        out_t, w_t, ids_t = layer.forward_tokens(x.reshape(-1, 32))
    assert torch.equal(out, out_t.reshape(2, 3, 32)) and torch.equal(w, w_t) and torch.equal(ids, ids_t)
    assert out.abs().sum() > 0


def test_a_replaced_tensor_is_seen_and_an_in_place_update_is_not():
    from moekit.decode_graphs import _tensor_slots, _unchanged

    layer = _layer()
    slots = _tensor_slots(layer)
    assert len(slots) == len(list(layer.parameters())) + len(list(layer.buffers()))
    with torch.no_grad():
        layer.w13.mul_(2)  # the captured graph reads the updated values: still valid
    assert _unchanged(slots)
    layer.shared_experts.down_proj.weight = torch.nn.Parameter(layer.shared_experts.down_proj.weight.clone())
    assert not _unchanged(slots)


def test_the_host_time_bench_says_it_needs_a_gpu(capsys):
    from moekit.bench import host

    assert host.main([]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA device here" in out[0]
