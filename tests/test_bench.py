"""``moekit bench`` on the CPU: the no-GPU message, the floor arithmetic, the baselines against the
float64 spec, the runner's bookkeeping with the device timing stubbed out, and the report, JSON and
plot from a synthetic run. The GPU timing itself is exercised only on a GPU, by the command."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from rich.console import Console

import moekit
import moekit.bench.runner as runner
from moekit.bench import timing
from moekit.bench.baselines import fp32_reference, hf_eager_loop
from moekit.bench.ceilings import Ceilings
from moekit.bench.floor import Floor, MoEShape, distinct_experts, expert_bytes, roofline_floor
from moekit.bench.plot import plot_results
from moekit.bench.report import render, write_json
from moekit.bench.results import (GROUPED_MM, HF_LOOP, MOEKIT, MOEKIT_ROUTING, BenchResults, Cell, ShapeResult,
                                  VariantResult)
from moekit.cli import bench as bench_cli
from moekit.cli.main import build_parser, main
from moekit.cli.presets import PRESETS, scale_down
from moe_inputs import make_inputs, spec_of
from tolerance import assert_close_to_reference

CEILINGS = Ceilings(copy_bytes_per_s=3.0e12, read_bytes_per_s=2.9e12, matmul_flops_per_s=7.5e14,
                    matmul_dtype="bfloat16")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # no table cell wrapped in captured text


# --- the command without a GPU ---------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_a_gpu_says_so_in_one_line_and_fails(capsys):
    code = main(["bench"])
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bench" in lines[0] and "needs a CUDA GPU" in lines[0], err


def test_token_list_accepts_commas_and_spaces():
    args = build_parser().parse_args(["bench", "--tokens", "1,8", "64", "--preset", "deepseek-v3"])
    assert args.tokens == [[1, 8], [64]] and args.preset == ["deepseek-v3"] and args.dtype == "bf16"


def test_import_loads_neither_triton_nor_matplotlib():
    code = ("import sys, moekit, moekit.cli.main, moekit.bench.runner, moekit.bench.report, moekit.bench.plot; "
            "print([m for m in ('triton', 'matplotlib') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the floor --------------------------------------------------------------------------------

def test_floor_of_a_hand_computed_case():
    # E=4, k=2, H=8, I=4, gated, bf16, with biases: one expert is (8·8 + 8·4 + 8 + 8) · 2 = 224 bytes.
    E, H, I = 4, 8, 4
    bf16 = dict(dtype=torch.bfloat16)
    nbytes = expert_bytes(torch.empty(E, 2 * I, H, **bf16), torch.empty(E, H, I, **bf16),
                          torch.empty(E, 2 * I, **bf16), torch.empty(E, H, **bf16))
    assert nbytes == 224
    shape = MoEShape(top_k=2, hidden=H, intermediate=I, gemm1_rows=2 * I, act_bytes=2, expert_bytes=nbytes)
    # T=3 tokens hitting 3 experts: 3·224 weights + 2·3·8·2 x and out + 3·2·(4+4) ids and weights = 816 bytes;
    # flops 2·3·2·(8·8 + 8·4) = 1152.
    floor = roofline_floor(shape, tokens=3, distinct=3, bandwidth=816.0, matmul_rate=576.0)
    assert (floor.bytes, floor.flops) == (816, 1152)
    assert (floor.memory_s, floor.compute_s, floor.seconds, floor.bound) == (1.0, 2.0, 2.0, "compute")
    fast_math = roofline_floor(shape, tokens=3, distinct=3, bandwidth=816.0, matmul_rate=1152e3)
    assert (fast_math.seconds, fast_math.bound) == (1.0, "memory")


def test_floor_shape_of_a_layer_without_gate():
    layer = moekit.MoE(6, 2, 16, 8, activation="relu2", dtype=torch.float32, device="cpu", expert_bias=True)
    shape = MoEShape.of_layer(layer)
    # relu2: w13 has I rows; fp32: 4 bytes; per expert (8·16 + 16·8 + 8 + 16) · 4.
    assert (shape.gemm1_rows, shape.act_bytes, shape.expert_bytes) == (8, 4, (128 + 128 + 8 + 16) * 4)
    floor = roofline_floor(shape, tokens=5, distinct=4.5, bandwidth=1.0, matmul_rate=1.0)
    assert floor.flops == 2 * 5 * 2 * (8 * 16 + 16 * 8)
    assert floor.bytes == 4.5 * shape.expert_bytes + 2 * 5 * 16 * 4 + 5 * 2 * 8


def test_distinct_experts_is_averaged_over_sets():
    a = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)  # experts {0, 1}
    b = torch.tensor([[3, 4], [5, 3], [4, 6]], dtype=torch.int32)  # experts {3, 4, 5, 6}
    assert distinct_experts([a, b]) == 3.0
    assert distinct_experts([b]) == 4.0


# --- the baselines against the float64 spec ---------------------------------------------------

CASES = [  # activation, biases, gate/up layout
    ("silu", False, moekit.GateUpLayout.CONCATENATED),
    ("gelu", True, moekit.GateUpLayout.INTERLEAVED),
    ("swigluoai", True, moekit.GateUpLayout.INTERLEAVED),
    ("swigluoai", False, moekit.GateUpLayout.CONCATENATED),
    ("relu2", True, moekit.GateUpLayout.CONCATENATED),
]


@pytest.mark.parametrize("fn", [hf_eager_loop, fp32_reference], ids=["hf_loop", "fp32_reference"])
@pytest.mark.parametrize("activation,bias,layout", CASES)
def test_baselines_match_the_spec(fn, activation, bias, layout):
    # 9 experts, only 6 routed to: the loop must skip the experts without tokens.
    inp = make_inputs(13, 9, 3, 24, 10, gated=activation != "relu2", bias=bias, used_experts=6)
    if activation == "swigluoai":
        inp.x.mul_(4)  # drive the gate and up halves past the clamp limit of 7
    kwargs = dict(gate_up_layout=layout)
    out = fn(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, activation, inp.w13_bias, inp.w2_bias, **kwargs)
    assert_close_to_reference(out, spec_of(inp, activation, **kwargs), torch.float32)


@pytest.mark.parametrize("fn", [hf_eager_loop, fp32_reference], ids=["hf_loop", "fp32_reference"])
def test_baselines_with_the_router_weight_on_the_input(fn):
    inp = make_inputs(11, 5, 1, 16, 8)
    out = fn(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, "silu", apply_router_weight_on_input=True)
    assert_close_to_reference(out, spec_of(inp, "silu", apply_router_weight_on_input=True), torch.float32)


def test_reference_computes_bf16_weights_in_fp32_and_loop_stays_bf16():
    inp = make_inputs(17, 8, 2, 32, 16, dtype=torch.bfloat16, bias=True)
    spec = spec_of(inp, "silu")
    ref = fp32_reference(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, "silu", inp.w13_bias, inp.w2_bias)
    assert ref.dtype == torch.float32
    assert_close_to_reference(ref, spec, torch.float32)  # fp32 arithmetic: far inside bf16's error
    assert inp.w13.dtype == torch.bfloat16  # the weights themselves were not upcast in place
    loop = hf_eager_loop(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, "silu", inp.w13_bias, inp.w2_bias)
    assert_close_to_reference(loop, spec, torch.bfloat16)


# --- the runner, with the device timing stubbed out -------------------------------------------

def _cpu_timing(monkeypatch):
    """do_bench and CUDA-graph capture need CUDA: time with the host clock, and fail every capture."""
    def median_ms(fn, warmup_ms=0, rep_ms=0):
        fn()
        return 0.25

    def no_capture(fn, sets):
        raise timing.CaptureError("RuntimeError: no CUDA graphs on the CPU")

    monkeypatch.setattr(runner, "median_ms", median_ms)
    monkeypatch.setattr(runner, "capture_rotation", no_capture)
    monkeypatch.setattr(runner, "measure_ceilings", lambda device, dtype, low_precision=(): CEILINGS)


def test_runner_fills_every_cell(monkeypatch):
    _cpu_timing(monkeypatch)
    presets = tuple(scale_down(PRESETS[name])[0] for name in ("gpt-oss-120b", "deepseek-v3"))
    config = runner.BenchConfig(presets=presets, tokens=(1, 5), dtype=torch.float32, input_sets=4)
    results = runner.run_bench(config, torch.device("cpu"))
    assert results.passed and results.ceilings == CEILINGS and results.timing["rep_ms"] == timing.REP_MS
    assert [s.preset for s in results.shapes] == ["gpt-oss-120b", "deepseek-v3"]
    for shape, preset in zip(results.shapes, presets):
        assert shape.error is None and shape.backend == "reference"
        assert [c.tokens for c in shape.cells] == [1, 5]
        for cell in shape.cells:
            assert cell.error is None
            assert preset.top_k <= cell.floor.distinct_experts <= min(preset.num_experts, cell.tokens * preset.top_k)
            for name in (MOEKIT, MOEKIT_ROUTING):
                v = cell.variants[name]
                assert v.passed and v.finite and v.rel_error <= 1e-5
                assert (v.us, v.mode) == (250.0, "eager") and "no CUDA graphs" in v.capture_error
            assert cell.variants[GROUPED_MM].error == "refused: device 'cpu' not in {cuda}"
            assert cell.variants[HF_LOOP].passed and cell.variants[HF_LOOP].capture_error is None
            assert cell.pct_of_floor(MOEKIT) == pytest.approx(100 * cell.floor_us / 250.0)


def test_runner_leaves_out_shared_experts_and_keeps_the_layout():
    preset = scale_down(PRESETS["gpt-oss-120b"])[0]
    layer = runner.build_bench_layer(dataclasses.replace(preset, shared_intermediate_size=64), torch.float32,
                                     torch.device("cpu"), seed=0)
    assert layer.shared_experts is None
    assert layer.gate_up_layout is moekit.GateUpLayout.INTERLEAVED and layer.w13_bias is not None
    assert not layer.w13.requires_grad


def test_a_failing_variant_stays_in_its_cell():
    sets = [runner.InputSet(torch.ones(2, 4), torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.int32))]

    def broken(s):
        raise ValueError("bad kernel")

    result = runner.measure_variant(runner.Variant(HF_LOOP, False, broken), sets, torch.ones(2, 4))
    assert result.us is None and result.error == "ValueError: bad kernel"

    def nan_out(s):
        return torch.full((2, 4), float("nan"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "median_ms", lambda fn, *a: 1.0)
        result = runner.measure_variant(runner.Variant(HF_LOOP, False, nan_out), sets, torch.ones(2, 4))
    assert result.us == 1000.0 and result.finite is False and result.passed is False


def test_error_description_names_the_original_cause_first():
    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        except RuntimeError:
            raise RuntimeError("capture invalidated")  # noqa: B904 - as torch.cuda.graph's __exit__ does
    except RuntimeError as e:
        text = timing.describe_error(e)
    assert text == ("RuntimeError: operation not permitted when stream is capturing"
                    " | then RuntimeError: capture invalidated")


def test_command_end_to_end_with_timing_stubbed(monkeypatch, capsys, tmp_path):
    _cpu_timing(monkeypatch)
    monkeypatch.setattr(bench_cli, "_require_gpu", lambda: torch.device("cpu"))
    for name in ("qwen3-30b-a3b", "gpt-oss-120b"):
        monkeypatch.setitem(PRESETS, name, scale_down(PRESETS[name])[0])
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--preset", "qwen3-30b-a3b", "--preset", "gpt-oss-120b", "--tokens", "1,3",
                 "--json", str(json_path), "--plot", str(png_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "Qwen3-30B-A3B" in out and "gpt-oss-120b" in out and "PASS" in out and "refused" in out
    data = json.loads(json_path.read_text())
    assert data["command"] == ("moekit bench --preset qwen3-30b-a3b --preset gpt-oss-120b --tokens 1,3 "
                               "--dtype bf16 --seed 0")
    assert data["dtype"] == "bfloat16" and data["passed"] is True
    assert [c["tokens"] for c in data["shapes"][0]["cells"]] == [1, 3]
    assert png_path.read_bytes().startswith(PNG_MAGIC)


def test_output_directory_is_checked_before_the_run(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench_cli, "_require_gpu", lambda: torch.device("cpu"))
    code = main(["bench", "--json", str(tmp_path / "missing" / "b.json")])
    _, err = capsys.readouterr()
    assert code == 2 and "does not exist" in err


# --- report, JSON and plot from a synthetic run -----------------------------------------------

def _synthetic_results() -> BenchResults:
    def variant(name, us, **kw):
        return VariantResult(name, us=us, mode=kw.pop("mode", "graph" if name in (MOEKIT, MOEKIT_ROUTING) else "eager"),
                             rel_error=kw.pop("rel_error", 3e-3), finite=kw.pop("finite", True),
                             passed=kw.pop("passed", True), **kw)

    floor = Floor(bytes=3e6, flops=1e9, memory_s=1e-6, compute_s=2e-6, distinct_experts=7.5)  # 2 µs, compute
    good = Cell(8, floor, {MOEKIT: variant(MOEKIT, 4.0), MOEKIT_ROUTING: variant(MOEKIT_ROUTING, 5.0),
                           GROUPED_MM: variant(GROUPED_MM, 8.0), HF_LOOP: variant(HF_LOOP, 40.0)})
    bad = Cell(64, floor, {
        MOEKIT: variant(MOEKIT, 10.0, mode="eager", capture_error="RuntimeError: capture invalidated",
                        rel_error=float("nan"), finite=False, passed=False),
        MOEKIT_ROUTING: variant(MOEKIT_ROUTING, 12.0),
        GROUPED_MM: VariantResult(GROUPED_MM, error="refused: dtype torch.float16 not in {bfloat16}"),
        HF_LOOP: variant(HF_LOOP, 50.0)})
    failed = Cell(4096, error="OutOfMemoryError: CUDA out of memory")
    shape = ShapeResult("qwen3-30b-a3b", "Qwen3-30B-A3B", 128, 8, 2048, 768, "silu", "concatenated", False,
                        backend="triton", cells=[good, bad, failed])
    missing = ShapeResult("deepseek-v3", "DeepSeek-V3/R1", 256, 8, 7168, 2048, "silu", "concatenated", False,
                          error="OutOfMemoryError: 22.5 GiB")
    env = {"device": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "sm_count": 132, "memory_gib": 79.1,
           "torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0", "python": "3.12", "moekit": "0.1.0",
           "moekit_commit": "abc123", "date": "2026-11-25T00:00:00+00:00"}
    return BenchResults(env, CEILINGS, "bfloat16", 4, "moekit bench --tokens 8,64,4096", timing.method(),
                        [shape, missing])


def test_report_shows_times_floor_and_notes():
    console = Console(width=220, record=True, file=open("/dev/null", "w"))
    render(_synthetic_results(), console)
    text = console.export_text()
    assert "NVIDIA H100 80GB HBM3" in text and "torch 2.11.0+cu130, triton 3.6.0, CUDA 13.0" in text
    assert "3.00 TB/s" in text and "750 TFLOP/s" in text and "abc123" in text
    good_row = next(line for line in text.splitlines() if line.strip("│ ").startswith("8 "))
    for value in ("2.0 com", "4.0", "50%", "5.0", "8.0", "40.0", "2.00×", "3.00e-03", "PASS"):
        assert value in good_row, (value, good_row)
    bad_row = next(line for line in text.splitlines() if line.strip("│ ").startswith("64 "))
    assert "10.0 eager [1]" in bad_row and "refused [2]" in bad_row and "FAIL" in bad_row
    assert "[1] moekit at T=64: CUDA-graph capture failed, timed eagerly: RuntimeError: capture invalidated" in text
    assert "[2] grouped_mm at T=64: refused: dtype torch.float16 not in {bfloat16}" in text
    assert "[3] moekit at T=64: check failed: non-finite output" in text
    failed_row = next(line for line in text.splitlines() if line.strip("│ ").startswith("4096 "))
    assert "error [4]" in failed_row and "FAIL" in failed_row
    assert "[4] cell at T=4096: OutOfMemoryError: CUDA out of memory" in text
    assert "not run: OutOfMemoryError: 22.5 GiB" in text


def test_json_has_every_number_and_no_nan(tmp_path):
    results = _synthetic_results()
    path = tmp_path / "bench.json"
    write_json(results, path)
    data = json.loads(path.read_text())  # strict JSON: allow_nan=False would have raised on NaN
    assert data["environment"]["device"] == "NVIDIA H100 80GB HBM3" and data["passed"] is False
    assert data["ceilings"]["bandwidth_bytes_per_s"] == 3.0e12 and data["timing"]["warmup_ms"] == timing.WARMUP_MS
    shape = data["shapes"][0]
    assert shape["backend"] == "triton" and data["shapes"][1]["error"].startswith("OutOfMemoryError")
    good, bad, failed = shape["cells"]
    assert good["floor"]["us"] == pytest.approx(2.0) and good["floor"]["bound"] == "compute"
    assert good["variants"]["moekit"]["pct_of_floor"] == pytest.approx(50.0)
    assert good["speedup_vs_grouped_mm"] == pytest.approx(2.0) and good["passed"] is True
    assert bad["variants"]["moekit"]["rel_error"] is None and bad["variants"]["moekit"]["passed"] is False
    assert bad["variants"]["grouped_mm"]["us"] is None and bad["speedup_vs_grouped_mm"] is None
    assert failed["error"] == "OutOfMemoryError: CUDA out of memory" and failed["floor"] is None


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "bench.png"
    plot_results(_synthetic_results(), path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
