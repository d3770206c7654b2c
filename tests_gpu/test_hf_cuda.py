"""The Hugging Face drop-in on CUDA: tiny models of the six families, both integration levels."""

import pytest
import torch
from _tiny_models import FAMILIES, greedy, moe_blocks, tiny_model
from tolerance import assert_close_to_reference

import moekit


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out  # gpt-oss returns (hidden, router_scores)


def _block_outputs(model, family, x):
    with torch.no_grad():
        return [_hidden(model.get_submodule(name)(x)) for name, _ in moe_blocks(model, family)]


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_and_experts_implementation_bf16(family):
    model = tiny_model(family).to("cuda", torch.bfloat16)
    x = torch.randn(3, 9, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
    names = [name for name, _ in moe_blocks(model, family)]
    eager = _block_outputs(model, family, x)
    model.set_experts_implementation("moekit")
    for ours, theirs in zip(_block_outputs(model, family, x), eager):
        assert_close_to_reference(ours, theirs.double(), torch.bfloat16)
    model.set_experts_implementation("eager")
    report = moekit.patch(model)
    assert [r.name for r in report.replaced] == names
    assert {r.backend for r in report.replaced} == {"triton"}, str(report)
    with torch.no_grad():
        for name, theirs in zip(names, eager):
            ours = _hidden(model.get_submodule(name)(x))
            assert_close_to_reference(ours, theirs.double(), torch.bfloat16)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_identical_fp32(family):
    model = tiny_model(family).to("cuda")
    eager = greedy(model)
    model.set_experts_implementation("moekit")
    with_experts_impl = greedy(model)
    model.set_experts_implementation("eager")
    moekit.patch(model)
    assert eager.tolist() == with_experts_impl.tolist() == greedy(model).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_identical_with_decode_graphs(family):
    model = tiny_model(family).to("cuda")
    moekit.patch(model)
    plain = greedy(model)
    graphed = tiny_model(family).to("cuda")
    report = moekit.patch(graphed, decode_graphs=64)
    assert greedy(graphed).tolist() == plain.tolist()
    blocks = [graphed.get_submodule(r.name).moe for r in report.replaced]
    assert all(block._decode_graphs.graphs for block in blocks), "no forward was replayed from a graph"
