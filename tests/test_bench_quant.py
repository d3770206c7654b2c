"""``moekit bench --quant`` on the CPU: the floor from the packed bytes of every scheme (hand-computed),
the matmul rate each scheme's floor uses, the reference on the dequantized weights, the runner with
the device timing stubbed out (the reference backend stands in for the kernels), the quant table,
JSON and plot from a synthetic run, and the command's arguments."""

import dataclasses
import json

import pytest
import torch
from rich.console import Console

import moekit
import moekit.bench.runner as runner
from moekit.bench import timing
from moekit.bench.baselines import fp32_reference
from moekit.bench.ceilings import Ceilings
from moekit.bench.floor import Floor, MoEShape, roofline_floor
from moekit.bench.plot import plot_results
from moekit.bench.quant_reference import W8A8_REL_TOL, WEIGHT_ONLY_REL_TOL, quant_tolerance, quantized_reference
from moekit.bench.quant_runner import build_quantized_layer, not_applicable
from moekit.bench.report import render, write_json
from moekit.bench.results import MOEKIT, BenchResults, Cell, QuantCell, ShapeResult, VariantResult
from moekit.cli import bench as bench_cli
from moekit.cli.main import build_parser, main
from moekit.cli.presets import PRESETS, scale_down
from moekit.experts.base import ExpertWeights
from moekit.experts.reference import ReferenceExperts
from moekit.quant import method_for
from moekit.quant.dequant import dequantize
from moekit.quant.spec import ActQuant

CEILINGS = Ceilings(copy_bytes_per_s=3.0e12, read_bytes_per_s=2.9e12, matmul_flops_per_s=7.5e14,
                    matmul_dtype="bfloat16", fp8_flops_per_s=1.5e15, int8_ops_per_s=1.4e15)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")


# --- the floor from packed bytes ----------------------------------------------------------------

E, TOP_K, H, I = 4, 2, 256, 128  # w13 is [4, 256, 256] (gated: 2I rows), w2 is [4, 256, 128]


def _matrix_bytes(scheme: str, n: int, k: int) -> int:
    """One expert matrix [n, k] as moekit stores it, by hand: codes + scales (+ zero points, + global scale)."""
    return {
        "fp8-per-tensor": n * k + 4,  # one fp32 scale per matrix
        "fp8-per-channel": n * k + n * 4,
        "fp8-block128": n * k + (n // 128) * (k // 128) * 4,
        "int8-w8a8": n * k + n * 4,
        "w8a16-ch": n * k + n * 4,
        "w8a16-g128": n * k + n * (k // 128) * 4,
        "w8a16-g64-asym": n * k + n * (k // 64) * (4 + 1),  # int8 zero points
        "w4a16-g128": n * k // 2 + n * (k // 128) * 4,
        "w4a16-g32-asym": n * k // 2 + n * (k // 32) * (4 + 1),  # uint8 zero points
        "w4a16-ch": n * k // 2 + n * 4,
        "mxfp4": n * k // 2 + n * (k // 32),  # e8m0 scales, one byte each
        "nvfp4": n * k // 2 + n * (k // 16) + 4,  # e4m3 scales and one fp32 global scale
    }[scheme]


@pytest.mark.parametrize("scheme", ["fp8-per-tensor", "fp8-per-channel", "fp8-block128", "int8-w8a8", "w8a16-ch",
                                    "w8a16-g128", "w8a16-g64-asym", "w4a16-g128", "w4a16-g32-asym", "w4a16-ch",
                                    "mxfp4", "nvfp4"])
def test_floor_counts_the_packed_bytes_read(scheme):
    layer = moekit.MoE(E, TOP_K, H, I, quant=scheme, dtype=torch.bfloat16, device="cpu")
    expected_expert = _matrix_bytes(scheme, 2 * I, H) + _matrix_bytes(scheme, H, I)
    shape = MoEShape.of_layer(layer)
    assert (shape.expert_bytes, shape.act_bytes, shape.gemm1_rows) == (expected_expert, 2, 2 * I)
    # T=3 tokens hitting 3 experts: 3 experts' packed bytes + x and out in bf16 + the routing (int32 id, fp32 weight).
    floor = roofline_floor(shape, tokens=3, distinct=3, bandwidth=1e12, matmul_rate=1e15)
    assert floor.bytes == 3 * expected_expert + 2 * 3 * H * 2 + 3 * TOP_K * 8
    assert floor.flops == 2 * 3 * TOP_K * (2 * I * H + H * I)  # quantization changes the bytes, not the work


def test_w4a16_g128_reads_about_a_quarter_of_bf16():
    bf16 = MoEShape.of_layer(moekit.MoE(E, TOP_K, H, I, dtype=torch.bfloat16, device="cpu")).expert_bytes
    w4 = MoEShape.of_layer(moekit.MoE(E, TOP_K, H, I, quant="w4a16", dtype=torch.bfloat16, device="cpu")).expert_bytes
    assert bf16 == 3 * H * I * 2
    assert w4 == 3 * H * I // 2 + 3 * H * I // 128 * 4  # 4 bits per weight + one fp32 scale per 128
    assert 0.25 < w4 / bf16 < 0.27


def test_matmul_rate_per_scheme():
    def rate(scheme):
        return CEILINGS.matmul_rate_for(method_for(scheme).spec)

    assert rate("fp8-block128") == (1.5e15, "fp8") and rate("fp8-per-tensor") == (1.5e15, "fp8")
    assert rate("int8-w8a8") == (1.4e15, "int8")
    for weight_only in ("w4a16-g128", "w8a16-ch", "mxfp4", "nvfp4"):  # dequantized to bf16: the bf16 rate
        assert rate(weight_only) == (7.5e14, "bfloat16")
    assert CEILINGS.matmul_rate_for(None) == (7.5e14, "bfloat16")
    unmeasured = Ceilings(3e12, 3e12, 7.5e14, "bfloat16")  # no fp8 run (or the device has no fp8)
    assert unmeasured.matmul_rate_for(method_for("fp8-block128").spec) == (7.5e14, "bfloat16")


def test_fp8_rate_sets_a_compute_bound_floor():
    layer = moekit.MoE(E, TOP_K, H, I, quant="fp8-block128", dtype=torch.bfloat16, device="cpu")
    rate, name = CEILINGS.matmul_rate_for(layer.quant_method.spec)
    floor = roofline_floor(MoEShape.of_layer(layer), 4096, E, bandwidth=1e18, matmul_rate=rate, rate_name=name)
    assert floor.bound == "compute" and floor.matmul_rate == "fp8"
    assert floor.compute_s == pytest.approx(floor.flops / 1.5e15)


# --- the reference on the dequantized weights ---------------------------------------------------

@pytest.mark.parametrize("scheme", ["w4a16-g128", "mxfp4", "nvfp4", "w8a16-ch"])
def test_weight_only_reference_is_the_fp32_moe_on_the_dequantized_weights(scheme):
    layer = moekit.MoE(8, 2, 128, 128, quant=scheme, dtype=torch.bfloat16, device="cpu", expert_bias=True)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    weights, ids = layer.route(x)
    spec = layer.quant_method.spec
    w13, w2 = dequantize(layer._quantized("w13"), spec), dequantize(layer._quantized("w2"), spec)
    expected = fp32_reference(x, w13, w2, weights, ids, "silu", layer.w13_bias, layer.w2_bias)
    got = quantized_reference(layer, x, weights, ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["fp8-per-tensor", "fp8-block128", "int8-w8a8"])
def test_w8a8_reference_reproduces_the_activation_quantization(scheme):
    layer = moekit.MoE(8, 2, 256, 128, quant=scheme, dtype=torch.bfloat16, device="cpu")
    x = torch.randn(6, 256, dtype=torch.bfloat16)
    weights, ids = layer.route(x)
    w = ExpertWeights(layer._quantized("w13"), layer._quantized("w2"), quant=layer.quant_method.spec)
    expected = ReferenceExperts().apply(x.float(), weights, ids, w, layer.activation, layer.gate_up_layout)
    torch.testing.assert_close(quantized_reference(layer, x, weights, ids), expected, rtol=0, atol=0)


def test_tolerances():
    assert quant_tolerance(method_for("w4a16-g128").spec) == WEIGHT_ONLY_REL_TOL == 1e-2
    assert quant_tolerance(method_for("fp8-block128").spec) == W8A8_REL_TOL[ActQuant.FP8]
    assert quant_tolerance(method_for("int8-w8a8").spec) == W8A8_REL_TOL[ActQuant.INT8]


# --- the quantized layer and the runner ---------------------------------------------------------

def test_quantized_layer_holds_the_unquantized_layers_weights():
    preset = scale_down(PRESETS["deepseek-v3"])[0]
    layer = runner.build_bench_layer(preset, torch.float32, torch.device("cpu"), seed=0)
    q = build_quantized_layer(layer, preset, "fp8-block128")
    assert q.quant == "fp8-block128" and not any(p.requires_grad for p in q.parameters())
    torch.testing.assert_close(q.router.weight, layer.router.weight, rtol=0, atol=0)
    torch.testing.assert_close(q.correction_bias, layer.correction_bias, rtol=0, atol=0)
    spec = q.quant_method.spec
    for name in ("w13", "w2"):
        w = getattr(layer, name)
        assert (dequantize(q._quantized(name), spec) - w).norm() / w.norm() < 0.05  # fp8: a few % off, not random


def test_a_scheme_whose_groups_do_not_divide_the_shape_is_not_applicable():
    layer = moekit.MoE(4, 2, 2880 // 16, 2880 // 16, dtype=torch.float32, device="cpu")  # gpt-oss, scaled: 180
    assert "group size 128" in not_applicable(layer, "w4a16-g128")
    assert not_applicable(layer, "fp8-block128") is None  # 2-D blocks may be partial at the edges
    assert not_applicable(layer, "w8a16-ch") is None


def _cpu_timing(monkeypatch):
    def median_ms(fn, warmup_ms=0, rep_ms=0):
        fn()
        return 0.25

    def no_capture(fn, sets):
        raise timing.CaptureError("RuntimeError: no CUDA graphs on the CPU")

    monkeypatch.setattr(runner, "median_ms", median_ms)
    monkeypatch.setattr(runner, "capture_rotation", no_capture)
    seen = {}

    def ceilings(device, dtype, low_precision=()):
        seen["low_precision"] = list(low_precision)
        return CEILINGS

    monkeypatch.setattr(runner, "measure_ceilings", ceilings)
    return seen


def _qwen_small():
    """Qwen3-30B-A3B scaled down to a shape every group size divides (H=256, I=128)."""
    return dataclasses.replace(scale_down(PRESETS["qwen3-30b-a3b"])[0], intermediate_size=128)


def test_runner_fills_every_scheme_of_every_cell(monkeypatch):
    seen = _cpu_timing(monkeypatch)
    presets = (_qwen_small(), scale_down(PRESETS["gpt-oss-120b"])[0])
    schemes = ("fp8-block128", "w4a16-g128", "w8a16-ch")
    config = runner.BenchConfig(presets=presets, tokens=(1, 5), dtype=torch.bfloat16, quant=schemes, baselines=False)
    done = []

    class Progress(runner.Progress):
        def cell_done(self, shape, cell):
            done.append((shape.preset, cell.tokens, "-"))

        def quant_cell_done(self, shape, scheme, tokens, cell):
            done.append((shape.preset, tokens, scheme if cell is not None else f"{scheme} skipped"))

    results = runner.run_bench(config, torch.device("cpu"), Progress())
    assert seen["low_precision"] == ["fp8"]  # no int8 scheme: no int8 GEMM timed
    assert results.quant == schemes and results.passed
    assert len(done) == config.cells == 2 * 2 * 4
    qwen, gpt = results.shapes
    assert qwen.quant_backends == {s: "reference" for s in schemes} and not qwen.quant_skipped
    # gpt-oss scaled to H=I=180: g128 cannot hold it (no checkpoint could); the others run.
    assert list(gpt.quant_skipped) == ["w4a16-g128"] and "w4a16-g128" not in gpt.quant_backends
    assert ("gpt-oss-120b", 5, "w4a16-g128 skipped") in done
    for shape in results.shapes:
        for cell in shape.cells:
            assert list(cell.variants) == [MOEKIT]  # the baselines are off with --quant
            unquantized_bytes = cell.floor.bytes
            for scheme, q in cell.quant.items():
                assert q.passed and q.result.finite and q.result.rel_error <= q.tolerance
                assert q.floor.bytes < unquantized_bytes and q.floor.distinct_experts == cell.floor.distinct_experts
                assert q.floor.matmul_rate == ("fp8" if scheme == "fp8-block128" else "bfloat16")
                assert cell.speedup_vs_unquantized(scheme) == pytest.approx(1.0)  # both stubbed at 250 µs


def test_runner_keeps_the_baselines_when_asked(monkeypatch):
    _cpu_timing(monkeypatch)
    preset = scale_down(PRESETS["qwen3-30b-a3b"])[0]
    config = runner.BenchConfig(presets=(preset,), tokens=(3,), dtype=torch.float32, quant=("w8a16-ch",),
                                baselines=True)
    cell = runner.run_bench(config, torch.device("cpu")).shapes[0].cells[0]
    assert set(cell.variants) == {"moekit", "moekit_routing", "grouped_mm", "hf_loop"} and set(cell.quant) == {"w8a16-ch"}


def test_a_failing_quantized_forward_fails_its_cell_only(monkeypatch):
    _cpu_timing(monkeypatch)
    import moekit.bench.quant_runner as quant_runner

    def broken(qlayer):
        def forward(s):
            return torch.full_like(s.x, float("nan"))
        return forward

    monkeypatch.setattr(quant_runner, "quantized_forward", broken)
    preset = scale_down(PRESETS["qwen3-30b-a3b"])[0]
    config = runner.BenchConfig(presets=(preset,), tokens=(2,), dtype=torch.bfloat16, quant=("mxfp4",),
                                baselines=False)
    results = runner.run_bench(config, torch.device("cpu"))
    cell = results.shapes[0].cells[0]
    assert cell.variants[MOEKIT].passed and not cell.quant["mxfp4"].passed
    assert cell.quant["mxfp4"].result.finite is False and not results.passed


# --- report, JSON and plot from a synthetic run -------------------------------------------------

def _synthetic_results() -> BenchResults:
    def v(name, us, **kw):
        return VariantResult(name, us=us, mode="graph", rel_error=kw.pop("rel_error", 3e-3), finite=True,
                             passed=kw.pop("passed", True), **kw)

    def floor(nbytes, rate="bfloat16"):
        return Floor(bytes=nbytes, flops=1e9, memory_s=nbytes / 3e12, compute_s=1e-7, distinct_experts=8,
                     matmul_rate=rate)

    bf16_floor = floor(300e6)  # 100 µs, memory bound
    decode = Cell(8, bf16_floor, {MOEKIT: v(MOEKIT, 125.0)}, quant={
        "fp8-block128": QuantCell("fp8-block128", floor(150e6, "fp8"), v("fp8-block128", 62.5), 4e-2),
        "w4a16-g128": QuantCell("w4a16-g128", floor(78e6), v("w4a16-g128", 50.0, rel_error=2.5e-2, passed=False),
                                1e-2),
        "mxfp4": QuantCell("mxfp4", floor(78e6), error="OutOfMemoryError: CUDA out of memory", tolerance=1e-2),
    })
    shape = ShapeResult("deepseek-v3", "DeepSeek-V3/R1", 256, 8, 7168, 2048, "silu", "concatenated", False,
                        backend="triton", cells=[decode],
                        quant_backends={"fp8-block128": "triton", "w4a16-g128": "reference", "mxfp4": "triton"},
                        quant_skipped={"nvfp4": "w13: group size 16 does not divide 7"})
    env = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "triton": "3.6", "cuda": "13.0", "python": "3.12",
           "moekit": "0.1.0", "moekit_commit": "abc123", "date": "2026-11-25T00:00:00+00:00"}
    return BenchResults(env, CEILINGS, "bfloat16", 4, "moekit bench --quant fp8-block128", timing.method(), [shape],
                        quant=("fp8-block128", "w4a16-g128", "mxfp4", "nvfp4"))


def _row(text: str, scheme: str) -> str:
    return next(line for line in text.splitlines() if f" {scheme} " in line and "│" in line)


def test_quant_report_has_a_row_per_scheme_with_its_own_floor_and_speedup():
    console = Console(width=240, record=True, file=open("/dev/null", "w"))
    render(_synthetic_results(), console)
    text = console.export_text()
    assert "1500 TFLOP/s (e4m3 8192³ torch._scaled_mm)" in text and "1400 TOP/s (8192³ torch._int_mm)" in text
    assert "grouped_mm µs" not in text  # no baselines timed: only the quant table
    bf16 = _row(text, "bf16")
    for value in ("300.0", "100.0 mem", "125.0", "80%", "1.00×", "PASS"):
        assert value in bf16, (value, bf16)
    fp8 = _row(text, "fp8-block128")
    for value in ("triton", "150.0", "50.0 mem", "62.5", "80%", "2.00×", "0.04", "PASS"):
        assert value in fp8, (value, fp8)
    w4 = _row(text, "w4a16-g128")
    for value in ("reference", "78.0", "26.0 mem", "50.0", "52%", "2.50×", "2.50e-02", "FAIL"):
        assert value in w4, (value, w4)
    assert "FAIL" in _row(text, "mxfp4") and "error [" in _row(text, "mxfp4")
    assert "nvfp4: not applicable to this shape, not run: w13: group size 16 does not divide 7" in text
    assert "w4a16-g128: the oracle chose the 'reference' backend: a fallback, not a kernel" in text
    assert "w4a16-g128 at T=8: check failed: rel err 0.025 > tolerance" in text
    assert "mxfp4 at T=8: OutOfMemoryError: CUDA out of memory" in text


def test_quant_json_records_floors_backends_and_speedups(tmp_path):
    path = tmp_path / "bench.json"
    write_json(_synthetic_results(), path)
    data = json.loads(path.read_text())
    assert data["quant"] == ["fp8-block128", "w4a16-g128", "mxfp4", "nvfp4"] and data["passed"] is False
    assert data["ceilings"]["fp8_flops_per_s"] == 1.5e15 and data["ceilings"]["int8_ops_per_s"] == 1.4e15
    shape = data["shapes"][0]
    assert shape["quant_backends"]["w4a16-g128"] == "reference" and "nvfp4" in shape["quant_skipped"]
    cell = shape["cells"][0]
    fp8 = cell["quant"]["fp8-block128"]
    assert fp8["floor"]["bytes"] == 150e6 and fp8["floor"]["matmul_rate"] == "fp8"
    assert fp8["us"] == 62.5 and fp8["pct_of_floor"] == pytest.approx(80.0)
    assert fp8["speedup_vs_unquantized"] == pytest.approx(2.0) and fp8["passed"] is True and fp8["tolerance"] == 4e-2
    assert fp8["result"]["mode"] == "graph" and fp8["result"]["rel_error"] == 3e-3
    assert cell["quant"]["mxfp4"]["us"] is None and cell["quant"]["mxfp4"]["error"].startswith("OutOfMemory")
    assert cell["passed"] is False


def test_quant_plot_writes_a_png(tmp_path):
    path = tmp_path / "bench.png"
    plot_results(_synthetic_results(), path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


# --- the command ----------------------------------------------------------------------------------

def test_quant_names_are_canonicalized_in_order_without_repeats():
    args = build_parser().parse_args(["bench", "--quant", "w4a16", "--quant", "FP8", "--quant", "w4a16-g128"])
    assert args.quant == ["w4a16", "FP8", "w4a16-g128"] and args.baselines is False
    assert bench_cli.quant_schemes(args.quant) == ("w4a16-g128", "fp8-per-tensor")
    assert bench_cli.quant_schemes(None) == ()


@pytest.mark.parametrize("value", ["w5a16", "none"])
def test_an_unknown_scheme_exits_2_with_one_line(capsys, value):
    code = main(["bench", "--quant", "fp8-block128", "--quant", value])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--quant" in lines[0] and repr(value) in lines[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_quant_without_a_gpu_says_so_in_one_line_and_fails(capsys):
    code = main(["bench", "--quant", "fp8-block128"])
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], err


def test_command_end_to_end_with_timing_stubbed(monkeypatch, capsys, tmp_path):
    _cpu_timing(monkeypatch)
    monkeypatch.setattr(bench_cli, "_require_gpu", lambda: torch.device("cpu"))
    monkeypatch.setitem(PRESETS, "qwen3-30b-a3b", _qwen_small())
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--preset", "qwen3-30b-a3b", "--tokens", "1,3", "--quant", "w4a16", "--quant", "fp8-block",
                 "--json", str(json_path), "--plot", str(png_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    # Not a terminal: one line per cell, the quantized ones naming the backend that ran.
    assert "qwen3-30b-a3b T=3 w4a16-g128 [reference]: 250.0 µs (eager)" in out
    assert "speedup vs bf16" in out and "PASS" in out
    data = json.loads(json_path.read_text())
    assert data["command"] == ("moekit bench --preset qwen3-30b-a3b --tokens 1,3 --dtype bf16 --seed 0 "
                               "--quant w4a16-g128 --quant fp8-block128")
    assert data["quant"] == ["w4a16-g128", "fp8-block128"] and data["passed"] is True
    assert set(data["shapes"][0]["cells"][1]["quant"]) == {"w4a16-g128", "fp8-block128"}
    assert png_path.read_bytes().startswith(PNG_MAGIC)
