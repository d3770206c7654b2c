"""The grouped-GEMM experts backend, run directly on the CPU (its declared device is CUDA)."""

import pytest
import torch

import moekit
from moekit.activations import GateUpLayout, parse_activation
from moekit.experts import ExpertWeights, TorchGroupedMMExperts
from moekit.hardware import Environment
from moekit.problem import MoEProblem
from moe_inputs import make_inputs, spec_of
from tolerance import assert_close_to_reference


def run_backend(inp, activation="silu", layout=GateUpLayout.CONCATENATED):
    weights = ExpertWeights(inp.w13, inp.w2, inp.w13_bias, inp.w2_bias)
    out = TorchGroupedMMExperts().apply(inp.x, inp.topk_weights, inp.topk_ids, weights,
                                        parse_activation(activation), layout)
    return out.to(inp.x.dtype)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 1, 16, 8),  # one row, one expert
        (0, 4, 2, 16, 8),  # empty batch
        (64, 16, 4, 32, 24),  # all experts hit
        (5, 64, 2, 16, 8),  # most groups empty, between non-empty ones
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_spec(shape, dtype):
    inp = make_inputs(*shape, dtype=dtype)
    assert_close_to_reference(run_backend(inp), spec_of(inp), dtype)


@pytest.mark.parametrize("activation", ["swigluoai", "relu2", "gelu"])
def test_activations_with_bias(activation):
    inp = make_inputs(40, 8, 2, 16, 12, gated=activation != "relu2", bias=True, used_experts=5)
    assert_close_to_reference(run_backend(inp, activation), spec_of(inp, activation), torch.float32)


def test_declares_cuda_bf16_and_alignment():
    env = Environment(True, "H100", (9, 0), True, None)
    base = dict(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=768, dtype=torch.bfloat16,
                device_type="cuda", activation=parse_activation("silu"))
    assert TorchGroupedMMExperts.supports(MoEProblem(**base), env) == (True, "supported")
    ok, reason = TorchGroupedMMExperts.supports(MoEProblem(**{**base, "hidden_size": 2047}), env)
    assert not ok and reason == "hidden_size=2047 rows are not 16-byte aligned"
    ok, reason = TorchGroupedMMExperts.supports(MoEProblem(**base), Environment(True, "V100", (7, 0), True, None))
    assert not ok and "compute capability" in reason


def test_refused_on_cpu_by_name():
    with pytest.raises(moekit.BackendUnavailableError, match="'torch-grouped-mm' cannot serve.*device 'cpu'"):
        moekit.MoE(8, 2, 16, 16, dtype=torch.bfloat16, device="cpu", backend="torch-grouped-mm")
