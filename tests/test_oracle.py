"""Backend selection as a pure function: priority, refusal reasons, explicit requests."""

import pytest
import torch

import moekit
from moekit.activations import Activation, ActivationKind, GateUpLayout
from moekit.experts.base import ExpertsBackend
from moekit.experts.reference import ReferenceExperts
from moekit.hardware import Environment
from moekit.oracle import BackendUnavailableError, select_backend
from moekit.problem import MoEProblem, ParallelLayout

CPU_ENV = Environment(cuda_available=False, device_name="cpu", compute_capability=None, triton_available=False,
                      requested_backend=None)


def problem(**overrides):
    args = dict(num_experts=8, top_k=2, hidden_size=16, intermediate_size=12, dtype=torch.bfloat16,
                device_type="cuda", activation=Activation(ActivationKind.SILU))
    args.update(overrides)
    return MoEProblem(**args)


class FastCudaBf16(ExpertsBackend):
    """A stand-in for a GPU backend: CUDA, bf16, silu, concatenated layout, needs triton."""

    name = "fast"
    description = "test double"
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.bfloat16})
    quant_schemes = frozenset({"none"})
    activations = frozenset({ActivationKind.SILU})
    gate_up_layouts = frozenset({GateUpLayout.CONCATENATED})
    parallel_layouts = frozenset({ParallelLayout.SINGLE})
    supports_bias = False
    supports_router_weight_on_input = False

    @classmethod
    def available(cls, env):
        return (True, "") if env.triton_available else (False, "triton is not installed")


GPU_ENV = Environment(cuda_available=True, device_name="H100", compute_capability=(9, 0), triton_available=True,
                      requested_backend=None)
CANDIDATES = (FastCudaBf16, ReferenceExperts)


def test_first_supported_wins_and_others_are_explained():
    sel = select_backend(problem(), GPU_ENV, CANDIDATES)
    assert sel.chosen is FastCudaBf16
    assert sel.table() == [
        ("fast", "chosen", "first supported in priority order"),
        ("reference", "usable", "lower priority than fast"),
    ]


@pytest.mark.parametrize(
    "overrides,env,reason",
    [
        (dict(device_type="cpu"), GPU_ENV, "device 'cpu' not in {cuda}"),
        (dict(dtype=torch.float16), GPU_ENV, "dtype torch.float16 not in {torch.bfloat16}"),
        (dict(activation=Activation(ActivationKind.SWIGLUOAI)), GPU_ENV, "activation 'swigluoai' not in {silu}"),
        (dict(gate_up_layout=GateUpLayout.INTERLEAVED), GPU_ENV, "gate/up layout 'interleaved' not in"),
        (dict(has_bias=True), GPU_ENV, "expert biases not supported"),
        (dict(apply_router_weight_on_input=True, top_k=1), GPU_ENV, "apply_router_weight_on_input not supported"),
        (dict(), CPU_ENV, "triton is not installed"),
    ],
)
def test_each_capability_refuses_with_its_reason(overrides, env, reason):
    sel = select_backend(problem(**overrides), env, CANDIDATES)
    fast_row = sel.table()[0]
    assert fast_row[1] == "refused" and reason in fast_row[2]
    assert sel.chosen is ReferenceExperts


def test_unsupported_quant_scheme_refused_by_all():
    with pytest.raises(BackendUnavailableError, match="fast: quant scheme 'fp3' not in {none}"):
        select_backend(problem(quant="fp3"), GPU_ENV, CANDIDATES)


def test_request_for_lower_priority_backend_is_honoured():
    sel = select_backend(problem(), GPU_ENV, CANDIDATES, requested="reference")
    assert sel.chosen is ReferenceExperts
    assert sel.table()[0] == ("fast", "usable", "not requested (asked for 'reference')")


def test_request_for_unsuitable_backend_is_an_error_with_reason():
    with pytest.raises(BackendUnavailableError, match=r"requested experts backend 'fast' cannot serve.*device 'cpu'"):
        select_backend(problem(device_type="cpu"), GPU_ENV, CANDIDATES, requested="fast")


def test_no_backend_at_all_lists_every_reason():
    with pytest.raises(BackendUnavailableError, match=r"no experts backend.*fast: .*reference: device 'tpu'"):
        select_backend(problem(device_type="tpu"), GPU_ENV, CANDIDATES)


def test_selection_reads_no_environment(monkeypatch):
    monkeypatch.setenv("MOEKIT_BACKEND", "reference")
    assert select_backend(problem(), GPU_ENV, CANDIDATES).chosen is FastCudaBf16


def test_reference_capabilities_cover_every_activation_and_layout():
    for kind in ActivationKind:
        for layout in GateUpLayout:
            ok, reason = ReferenceExperts.supports(
                problem(device_type="cpu", activation=Activation(kind), gate_up_layout=layout, has_bias=True), CPU_ENV)
            assert ok, reason


def test_unquantized_oracle_priority_ends_with_reference():
    assert moekit.oracle.oracle_for("none").priority[-1] is ReferenceExperts
    with pytest.raises(NotImplementedError, match="no backend oracle for quant scheme 'fp3'"):
        moekit.oracle.oracle_for("fp3")


def test_unquantized_oracle_picks_triton_on_gpu():
    from moekit.oracle import oracle_for

    sel = select_backend(problem(intermediate_size=16), GPU_ENV, oracle_for("none").priority)
    assert sel.chosen.name == "triton"
    assert [row[:2] for row in sel.table()] == [("triton", "chosen"), ("torch-grouped-mm", "usable"),
                                                ("reference", "usable")]


def test_triton_refused_without_triton_or_on_old_gpus():
    from moekit.experts import TritonExperts

    no_triton = Environment(True, "H100", (9, 0), False, None)
    assert TritonExperts.supports(problem(), no_triton) == (False, "triton is not installed")
    old = Environment(True, "V100", (7, 0), True, None)
    ok, reason = TritonExperts.supports(problem(), old)
    assert not ok and "compute capability" in reason


def test_interpreted_triton_serves_the_cpu_only_when_requested():
    from moekit.oracle import oracle_for

    interp = Environment(False, "cpu", None, True, None, triton_interpreter=True)
    cpu_problem = problem(device_type="cpu", dtype=torch.float32)
    sel = select_backend(cpu_problem, interp, oracle_for("none").priority)
    assert sel.chosen.name == "reference"
    assert sel.table()[0][0] == "triton" and "only when requested" in sel.table()[0][2]
    assert select_backend(cpu_problem, interp, oracle_for("none").priority, requested="triton").chosen.name == "triton"
    no_interp = Environment(False, "cpu", None, True, None)
    with pytest.raises(BackendUnavailableError, match="triton"):
        select_backend(cpu_problem, no_interp, oracle_for("none").priority, requested="triton")
