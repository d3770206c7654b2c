"""``moekit tune --quant`` on the CPU: the search space for quantized weights, a quantized table key
through write_table/load_table, the quantized tuner's search with a stand-in backend (the fastest
correct candidate wins; wrong and refused candidates are rejected), and the command's arguments."""

import json

import pytest
import torch

import moekit.triton_ops.tile_configs as tc
from moekit.activations import parse_activation
from moekit.cli.main import main
from moekit.experts.reference import ReferenceExperts
from moekit.quant import method_for
from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles, TableKey
from moekit.tuning import quant_tuner
from moekit.tuning.search_space import (SHARED_MEMORY_BYTES, gemm_candidates, quantized_block_m_candidates,
                                       tiles_k_groups)
from moekit.tuning.tuner import BucketResult, TuneShape


def _spec(scheme):
    return method_for(scheme).spec


# --- the search space -----------------------------------------------------------------------------

def _smem(t: GemmTiles, block_m: int, gated: bool, act_bytes: float, weight_bytes: float) -> float:
    return t.num_stages * (block_m * t.block_k * act_bytes + (2 if gated else 1) * t.block_k * t.block_n * weight_bytes)


@pytest.mark.parametrize("gated", [True, False])
def test_weight_only_tensor_core_candidates_are_swapped(gated):
    # weight_only_swapped.py: weight rows on wgmma's M side, 64 per warpgroup; packed codes fit
    # deeper pipelines
    for scheme in ("w4a16-g128", "mxfp4", "nvfp4", "w8a16-ch"):
        spec = _spec(scheme)
        for block_m in (16, 32, 64, 128):
            tiles = gemm_candidates(block_m, gated, 2, spec)
            assert tiles and all(t.swap_ab and t.block_n >= 64 * (t.num_warps // 4) for t in tiles)
            assert all(_smem(t, block_m, gated, 2, spec.weight_bits() / 8) <= SHARED_MEMORY_BYTES for t in tiles)
    assert not any(t.swap_ab for t in gemm_candidates(16, gated, 2, _spec("fp8-per-channel")))


@pytest.mark.parametrize("scheme", ["fp8-block128", "w4a16-g32", "w8a16-g64-asym", "mxfp4", "int8-w8a8"])
@pytest.mark.parametrize("block_m", [16, 32, 64, 128])
def test_quant_candidates_tile_the_groups_and_skip_tma(scheme, block_m):
    spec = _spec(scheme)
    candidates = gemm_candidates(block_m, True, 2, spec)
    assert candidates and not any(t.tma for t in candidates)
    assert all(tiles_k_groups(t.block_k, spec.group_k) for t in candidates)
    act_bytes = 2 if spec.weight_only else 1
    assert all(_smem(t, block_m, True, act_bytes, spec.weight_bits() / 8) <= SHARED_MEMORY_BYTES for t in candidates)


@pytest.mark.parametrize("block_m", [16, 64, 128])
def test_fp8_block128_steps_within_a_block_and_tries_the_fused_output_tile(block_m):
    candidates = gemm_candidates(block_m, True, 2, _spec("fp8-block128"))
    assert max(t.block_k for t in candidates) == 128  # a longer K step would be cut to the block: a duplicate
    assert 128 in {t.block_n for t in candidates}  # gemm1 then quantizes gemm2's input in its epilogue
    per_channel = gemm_candidates(block_m, True, 2, _spec("fp8-per-channel"))
    assert max(t.block_k for t in per_channel) > 128  # per-channel weight scales span K


def test_a_k_step_covers_whole_groups_or_lies_in_one():
    assert tiles_k_groups(256, 128) and tiles_k_groups(64, 128) and tiles_k_groups(512, 0)
    assert not tiles_k_groups(96, 64) and not tiles_k_groups(64, 48)


def test_unquantized_space_is_unchanged():
    assert gemm_candidates(128, True) == gemm_candidates(128, True, 2, None)
    assert any(t.tma for t in gemm_candidates(128, True))


# --- a quantized table key ------------------------------------------------------------------------

def test_quantized_table_round_trips_through_write_and_load(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "CONFIG_DIR", tmp_path)
    key = TableKey("NVIDIA H100 80GB HBM3", 256, 8, 7168, 2048, torch.bfloat16, True, quant="w4a16-g128")
    plain = TableKey("NVIDIA H100 80GB HBM3", 256, 8, 7168, 2048, torch.bfloat16, True)
    decode = ExpertsTiles(16, GemmTiles(16, 1024, 1, 4, 4), GemmTiles(32, 512, 1, 2, 6))
    prefill = ExpertsTiles(128, GemmTiles(128, 128, 8, 8, 3), GemmTiles(256, 64, 8, 8, 4))
    path = tc.write_table(key, {1: decode, 4096: prefill}, {"quant": "w4a16-g128"}, tmp_path)
    assert path.name == "E256-k8-H7168-I2048-bfloat16-w4a16-g128-NVIDIA_H100_80GB_HBM3.json"
    assert tc.load_table(key) == {1: decode, 4096: prefill}
    assert tc.load_table(plain) == {}  # the unquantized table is another file
    assert tc.tiles_for(key, 2) == (decode, f"tuned {path.name} bucket 1")
    assert json.loads(path.read_text())["meta"]["quant"] == "w4a16-g128"
    tc.load_table.cache_clear()


# --- the search, with a stand-in backend ----------------------------------------------------------

class StandInBackend:
    """The reference backend, except that it is "slow" by its tiles, wrong for a 128-wide gemm1 and
    refuses gemm1 K steps of 512 (the GEMV's), so the search's bookkeeping can be checked without a
    GPU."""

    def __init__(self):
        self.last = None

    def apply(self, x, topk_weights, topk_ids, weights, activation, gate_up_layout, tiles=None):
        self.last = tiles
        if tiles.gemm1.block_k == 512:
            raise ValueError("block_k 512 not supported by this kernel")
        out = ReferenceExperts().apply(x, topk_weights, topk_ids, weights, activation, gate_up_layout)
        return out * 2 if tiles.gemm1.block_n == 128 else out

    def ms(self, fn) -> float:
        fn()
        t = self.last
        # Fastest: tensor-core row blocks, gemm1 block_n 128 (wrong!), then 64; gemm2 K steps of 256,
        # shallow pipelines.
        gemv = 100 if t.block_m <= 4 else 0
        return (gemv + abs(t.gemm1.block_n - 100) + abs(t.gemm2.block_k - 256) / 64 + t.gemm2.num_stages / 10
                + t.gemm1.num_stages / 100) / 1e3


def test_quant_tuner_keeps_the_fastest_correct_candidate():
    shape = TuneShape(8, 2, 256, 128, torch.bfloat16, parse_activation("silu"))
    backend = StandInBackend()
    seen = []
    results = quant_tuner.tune_quant_shape(shape, "w4a16", buckets=(1, 2), device="cpu", compile_workers=1,
                                           backend=backend, bench_ms=backend.ms, on_result=lambda r: seen.append(len(r)))
    assert seen == [1, 2] and [r.tokens for r in results] == [1, 2]
    for r in results:
        assert isinstance(r, BucketResult) and r.gemm1_us is None and r.forward_us is not None
        assert r.tiles.block_m == 16
        assert r.tiles.gemm1.block_n == 64  # 128 would be faster but computes a wrong result
        assert r.tiles.gemm1.swap_ab and r.tiles.gemm1.num_stages == 3
        assert (r.tiles.gemm2.block_k, r.tiles.gemm2.num_stages) == (256, 3)
        assert r.report["rejected_wrong"] > 0 and r.report["rejected_failed"] > 0
        assert "block_k 512 not supported" in r.report["first_failure"]
        assert r.report["rel_error"] < 1e-2


def test_quant_tuner_tries_the_decode_gemv_at_about_a_row_per_expert():
    assert quantized_block_m_candidates(1, 2, 8, gemv=True) == [1, 2, 16]
    assert quantized_block_m_candidates(1, 2, 8, gemv=False) == [16]
    assert quantized_block_m_candidates(16, 2, 8, gemv=True) == [16]  # 4 rows per expert: tensor cores
    assert quantized_block_m_candidates(64, 2, 8, gemv=True) == [16, 32]  # 16 rows per expert: no GEMV
    assert {t.split_k for t in gemm_candidates(1, False, 2, _spec("mxfp4"))} == {1, 2, 4}
    assert all(t.num_stages == 1 for t in gemm_candidates(2, True, 2, _spec("mxfp4")))

    class GemvFastest(StandInBackend):
        def ms(self, fn) -> float:
            fn()
            return (1.0 if self.last.block_m > 2 else 0.5 + self.last.gemm2.split_k / 10) / 1e3

    shape = TuneShape(8, 2, 256, 128, torch.bfloat16, parse_activation("silu"))
    backend = GemvFastest()
    (result,) = quant_tuner.tune_quant_shape(shape, "w4a16", buckets=(1,), device="cpu", compile_workers=1,
                                             backend=backend, bench_ms=backend.ms)
    assert result.tiles.block_m in (1, 2) and result.tiles.gemm2.split_k == 1
    # w8a8 schemes have no GEMV: the same stand-in keeps tensor-core row blocks
    (result,) = quant_tuner.tune_quant_shape(shape, "fp8-per-channel", buckets=(1,), device="cpu", compile_workers=1,
                                             backend=backend, bench_ms=backend.ms)
    assert result.tiles.block_m == 16


def test_quant_tuner_holds_swapped_tiles_for_codes_in_mma_order():
    # At one token the defaults are the decode GEMV's; while the tuner searches the tensor-core row
    # blocks, the gemm2 it holds must be a swapped one: the kernels refuse anything else for 4-bit
    # codes in MMA order (mxfp4 and w4a16 on the layer), as this stand-in does.
    class MmaOrderCodes(StandInBackend):
        def apply(self, *args, tiles=None):
            if tiles.block_m > 2 and not (tiles.gemm1.swap_ab and tiles.gemm2.swap_ab):
                raise ValueError("codes in MMA order need the swapped loop")
            return super().apply(*args, tiles=tiles)

    shape = TuneShape(8, 2, 256, 128, torch.bfloat16, parse_activation("silu"))
    backend = MmaOrderCodes()
    (result,) = quant_tuner.tune_quant_shape(shape, "mxfp4", buckets=(1,), device="cpu", compile_workers=1,
                                             backend=backend, bench_ms=backend.ms)
    assert result.tiles.block_m == 16 and result.tiles.gemm1.swap_ab and result.tiles.gemm2.swap_ab
    assert "MMA order" not in result.report.get("first_failure", "")


def test_quant_tuner_says_why_when_no_candidate_is_correct():
    class AlwaysWrong(StandInBackend):
        def apply(self, *args, tiles=None):
            return super().apply(*args, tiles=tiles) + 1.0

    shape = TuneShape(4, 2, 128, 64, torch.bfloat16, parse_activation("silu"))
    backend = AlwaysWrong()
    with pytest.raises(RuntimeError, match="no tile candidate ran correctly"):
        quant_tuner.tune_quant_shape(shape, "fp8-per-channel", buckets=(1,), device="cpu", compile_workers=1,
                                     backend=backend, bench_ms=backend.ms)


# --- the command ----------------------------------------------------------------------------------

def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_tune_rejects_an_unknown_scheme(capsys):
    line = _one_line_error(capsys, ["tune", "--preset", "qwen3-30b-a3b", "--quant", "int3"])
    assert "--quant" in line and "'int3'" in line


def test_tune_rejects_a_scheme_that_cannot_hold_the_shape(capsys):
    line = _one_line_error(capsys, ["tune", "--preset", "gpt-oss-120b", "--quant", "w4a16"])
    assert "w4a16-g128 cannot hold gpt-oss-120b" in line and "2880" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_tune_quant_without_a_gpu_says_so(capsys):
    line = _one_line_error(capsys, ["tune", "--preset", "deepseek-v3", "--quant", "fp8-block128"])
    assert "needs a CUDA GPU" in line


def test_tune_quant_writes_a_table_keyed_by_the_scheme(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    calls = []

    def fake_tune(shape, scheme, buckets, compile_workers, on_result):
        calls.append((shape.num_experts, scheme, buckets))
        tiles = ExpertsTiles(16, GemmTiles(16, 1024, 1, 4, 4), GemmTiles(32, 512, 1, 2, 6))
        results = [BucketResult(t, tiles, None, None, {"rel_error": 3e-3, "rejected_wrong": 1,
                                                       "rejected_failed": 0}, forward_us=100.0 + t) for t in buckets]
        for i in range(len(results)):
            on_result(results[: i + 1])
        return results

    monkeypatch.setattr(quant_tuner, "tune_quant_shape", fake_tune)
    code = main(["tune", "--preset", "deepseek-v3", "--quant", "w4a16", "--quant", "fp8-block", "--tokens", "1", "8",
                 "--out-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert calls == [(256, "w4a16-g128", (1, 8)), (256, "fp8-block128", (1, 8))]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["E256-k8-H7168-I2048-bfloat16-fp8-block128-NVIDIA_H100_80GB_HBM3.json",
                     "E256-k8-H7168-I2048-bfloat16-w4a16-g128-NVIDIA_H100_80GB_HBM3.json"]
    data = json.loads((tmp_path / names[1]).read_text())
    assert data["meta"]["quant"] == "w4a16-g128" and data["meta"]["measured_us"]["8"]["forward"] == 108.0
    assert set(data["buckets"]) == {"1", "8"}
    assert "deepseek-v3 w4a16-g128: best tiles per bucket" in out and "108.0" in out
    # tuning another bucket adds it to the table; --fresh starts the table again
    for extra, want in (([], {"1", "8", "16"}), (["--fresh"], {"16"})):
        code = main(["tune", "--preset", "deepseek-v3", "--quant", "w4a16", "--tokens", "16",
                     "--out-dir", str(tmp_path), *extra])
        assert code == 0, capsys.readouterr()
        data = json.loads((tmp_path / names[1]).read_text())
        assert set(data["buckets"]) == want and set(data["meta"]["measured_us"]) == want


def _triton_serves(scheme: str) -> bool:
    from moekit.experts.triton_fused import TritonExperts

    return scheme in TritonExperts.quant_schemes


@pytest.mark.skipif(not _triton_serves("w4a16-g128"), reason="the Triton backend does not serve w4a16-g128 yet")
def test_quant_tuner_through_the_triton_backend_in_the_interpreter(monkeypatch):
    # Two candidates per GEMM keep the interpreter's run short; the search goes through
    # TritonExperts().apply(..., tiles=...) as on a GPU.
    monkeypatch.setattr(quant_tuner, "gemm_candidates",
                        lambda block_m, gated, elem_bytes, spec: [GemmTiles(16, 64, 1, 4, 2), GemmTiles(32, 128, 1, 4, 2)])
    shape = TuneShape(4, 2, 128, 128, torch.float16, parse_activation("silu"))
    results = quant_tuner.tune_quant_shape(shape, "w4a16", buckets=(1,), device="cpu", compile_workers=1,
                                           bench_ms=lambda fn: (fn(), 1.0)[1])
    assert results[0].report["rel_error"] < 1e-2 and results[0].report["rejected_wrong"] == 0
