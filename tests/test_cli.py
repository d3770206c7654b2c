"""The ``moekit`` command, run in-process through ``main(argv)`` (and once as a subprocess)."""

import subprocess
import sys

import pytest
import torch

import moekit.quant

from moekit.cli import run as run_module
from moekit.cli.main import main
from moekit.cli.presets import CPU_MAX_EXPERTS, CPU_MAX_HIDDEN, PRESETS, scale_down
from moekit.experts import ALL_BACKENDS
from moekit.routing import Scoring
from moekit.tolerance import ACT_QUANT_REL_TOL

# (hidden, expert intermediate, experts, top_k, shared intermediate) from the models' configs,
# as in the "Model shapes" table of the project's FACTS.md.
MODEL_SHAPES = {
    "mixtral-8x7b": (4096, 14336, 8, 2, None),
    "qwen3-30b-a3b": (2048, 768, 128, 8, None),
    "qwen3-235b-a22b": (4096, 1536, 128, 8, None),
    "deepseek-v3": (7168, 2048, 256, 8, 2048),
    "gpt-oss-120b": (2880, 2880, 128, 4, None),
    "gpt-oss-20b": (2880, 2880, 32, 4, None),
    "llama4-scout": (5120, 8192, 16, 1, 8192),
    "olmoe-1b-7b": (2048, 1024, 64, 8, None),
    "glm-4.5": (5120, 1536, 160, 8, 1536),
    "kimi-k2": (7168, 2048, 384, 8, 2048),
}


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich reads it: no table cell is wrapped in the captured text
    monkeypatch.delenv("MOEKIT_BACKEND", raising=False)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_default_preset_passes_and_names_backend(capsys):
    code, out, err = run_cli(capsys, "run", "--tokens", "24", "--iters", "2", "--device", "cpu")
    assert code == 0, err
    assert "Qwen3-30B-A3B" in out and "Scaled down for a CPU run" in out
    assert "reference" in out and "PASS" in out and "FAIL" not in out
    assert "tokens/s" in out and "µs" in out


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_run_every_preset_matches_the_spec(capsys, preset):
    # Exercises each model's routing, activation, biases, shared expert and weight placement.
    code, out, err = run_cli(capsys, "run", "--preset", preset, "--tokens", "16", "--iters", "1", "--device", "cpu")
    assert code == 0, out + err
    assert "PASS" in out


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_run_low_precision_uses_its_tolerance(capsys, dtype):
    code, out, _ = run_cli(capsys, "run", "--preset", "deepseek-v3", "--dtype", dtype, "--tokens", "16",
                           "--iters", "1", "--device", "cpu")
    assert code == 0
    assert f"{dtype} / cpu" in out and "0.01" in out and "PASS" in out


def test_run_exits_1_when_the_check_fails(capsys, monkeypatch):
    monkeypatch.setitem(run_module.REL_TOL, torch.float32, 0.0)  # no fp32 output is exact
    code, out, _ = run_cli(capsys, "run", "--tokens", "8", "--iters", "1", "--device", "cpu")
    assert code == 1
    assert "FAIL" in out and "PASS" not in out


@pytest.mark.parametrize("preset, quant", [("qwen3-30b-a3b", "w4a16"), ("gpt-oss-120b", "mxfp4"),
                                           ("deepseek-v3", "fp8-block128")])
def test_run_quantized_checks_against_the_dequantized_spec(capsys, preset, quant):
    code, out, err = run_cli(capsys, "run", "--preset", preset, "--quant", quant, "--tokens", "12", "--iters", "1",
                             "--device", "cpu")
    assert code == 0, out + err
    assert "PASS" in out and moekit.quant.parse_quant(quant) in out
    if quant == "fp8-block128":  # activations are quantized too: the fp8 bound, not fp32's
        assert str(ACT_QUANT_REL_TOL["fp8_e4m3"]) in out


def test_run_unknown_quant_scheme_is_one_line(capsys):
    code, _, err = run_cli(capsys, "run", "--quant", "fp9", "--device", "cpu")
    assert code == 2 and "unknown quant scheme 'fp9'" in err and err.count("\n") == 1


def test_run_skip_check(capsys):
    code, out, _ = run_cli(capsys, "run", "--tokens", "8", "--iters", "1", "--device", "cpu", "--skip-check")
    assert code == 0 and "skipped" in out and "PASS" not in out


def test_explain_shows_chosen_and_refused(capsys):
    code, out, _ = run_cli(capsys, "explain", "--preset", "deepseek-v3", "--device", "cpu")
    assert code == 0
    assert "reference" in out and "chosen" in out
    assert "torch-grouped-mm" in out and "refused" in out and "device 'cpu' not in {cuda}" in out
    assert "E=32 top_k=8" in out  # the scaled-down shape actually built


def test_explain_honours_the_environment_request(capsys, monkeypatch):
    monkeypatch.setenv("MOEKIT_BACKEND", "reference")
    code, out, _ = run_cli(capsys, "explain", "--device", "cpu")
    assert code == 0 and "requested: reference" in out


def test_unsuitable_backend_is_a_clear_error(capsys):
    code, _, err = run_cli(capsys, "explain", "--device", "cpu", "--backend", "torch-grouped-mm")
    assert code == 2
    assert "cannot serve this layer" in err and "device 'cpu' not in {cuda}" in err


def test_unknown_preset_lists_the_valid_ones(capsys):
    code, _, err = run_cli(capsys, "run", "--preset", "gpt-5")
    assert code == 2
    assert "invalid choice: 'gpt-5'" in err
    assert all(name in err for name in PRESETS)


def test_bad_token_count_is_refused(capsys):
    code, _, err = run_cli(capsys, "run", "--tokens", "0")
    assert code == 2 and "expected a positive integer, got 0" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    code, _, err = run_cli(capsys, "run", "--device", "cuda")
    assert code == 2 and "--device cuda" in err and "--device cpu" in err


def test_info_lists_versions_devices_and_backends(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert torch.__version__ in out and "transformers" in out and "triton" in out
    for backend in ALL_BACKENDS:
        assert f"experts backend {backend.name!r}" in out
    assert "available here" in out and "MOEKIT_BACKEND" in out


def test_help_lists_the_commands_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "moekit.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("run", "explain", "info"):
        assert f"    {command} " in result.stdout


@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_preset_shapes_are_the_models(name):
    p = PRESETS[name]
    shape = (p.hidden_size, p.intermediate_size, p.num_experts, p.top_k, p.shared_intermediate_size)
    assert shape == MODEL_SHAPES[name]


def test_preset_routing_and_activation():
    deepseek = PRESETS["deepseek-v3"].routing
    assert (deepseek.scoring, deepseek.num_groups, deepseek.topk_groups, deepseek.routed_scaling_factor,
            deepseek.correction_bias) == (Scoring.SIGMOID, 8, 4, 2.5, True)
    assert PRESETS["kimi-k2"].routing.routed_scaling_factor == 2.827
    assert PRESETS["olmoe-1b-7b"].routing.renormalize is False
    oss = PRESETS["gpt-oss-120b"]
    assert (oss.activation, oss.routing.scoring, oss.expert_bias) == ("swigluoai", Scoring.TOPK_SOFTMAX, True)
    llama = PRESETS["llama4-scout"]
    assert (llama.routing.scoring, llama.apply_router_weight_on_input) == (Scoring.TOPK_SIGMOID, True)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_scaled_down_shape_keeps_the_layer_kind(name):
    model = PRESETS[name]
    small, scaling = scale_down(model)
    assert small.top_k == model.top_k and small.routing == model.routing
    assert (small.activation, small.expert_bias, small.apply_router_weight_on_input) == (
        model.activation, model.expert_bias, model.apply_router_weight_on_input)
    assert small.num_experts <= max(CPU_MAX_EXPERTS, model.top_k) and small.hidden_size <= CPU_MAX_HIDDEN
    assert small.hidden_size * scaling.factor == model.hidden_size  # one exact factor for every size
    assert small.intermediate_size * scaling.factor == model.intermediate_size
    assert (small.shared_intermediate_size is None) == (model.shared_intermediate_size is None)
    groups, chosen = model.routing.num_groups, model.routing.topk_groups
    if groups is not None:
        assert small.num_experts % groups == 0
        assert chosen * (small.num_experts // groups) >= small.top_k


def test_eplb_reports_imbalance_before_and_after(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eplb", "--experts", "32", "--ranks", "2,4", "--pairs", "20000")
    assert code == 0
    assert "contiguous" in out and "rebalanced +1" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("│")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        contiguous, plus_one = float(cells[1]), float(cells[3])
        assert plus_one < contiguous
    trace = tmp_path / "load.json"
    trace.write_text("[100, 1, 1, 1, 50, 1, 1, 1]")
    code, out, _ = run_cli(capsys, "eplb", "--load", str(trace), "--ranks", "2", "--spare-slots", "1")
    assert code == 0 and "8 experts" in " ".join(out.split())  # the title may wrap (a long tmp path)


def test_eplb_bad_arguments_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eplb", "--ranks", "two")
    assert code == 2 and "comma-separated integers" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = run_cli(capsys, "eplb", "--load", str(bad))
    assert code == 2
