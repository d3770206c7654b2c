"""Tile tables: shipped files parse, the nearest bucket wins (log scale), a table round-trips through
JSON, and shapes without a table get the default heuristic."""

import json

import pytest
import torch

from moekit.triton_ops import tile_configs as tc
from moekit.tuning.search_space import SHARED_MEMORY_BYTES, block_m_candidates, gemm_candidates

SHIPPED_SHAPES = [(8, 2, 4096, 14336), (128, 8, 2048, 768), (256, 8, 7168, 2048), (128, 4, 2880, 2880),
                  (128, 8, 4096, 1536), (64, 8, 2048, 1024), (32, 4, 2880, 2880)]


@pytest.mark.parametrize("device", ["NVIDIA H100 80GB HBM3", "NVIDIA H200"])
@pytest.mark.parametrize("shape", SHIPPED_SHAPES)
def test_shipped_tables_cover_the_benchmark_buckets(shape, device):
    key = tc.TableKey(device, *shape, torch.bfloat16)
    table = tc.load_table(key)
    assert sorted(table) == [1, 8, 64, 256, 1024, 4096, 16384], key.file_name()
    for tiles in table.values():
        assert tiles.block_m in (16, 32, 64, 128)
        meta = json.loads((tc.CONFIG_DIR / key.file_name()).read_text())["meta"]
        assert meta["device"] == device


QUANT_TABLES = sorted(p.name for p in tc.CONFIG_DIR.glob("*.json") if json.loads(p.read_text())["meta"].get("quant"))


def test_quant_tables_shipped():
    # At the four benchmark shapes (256 and 4096 tokens): fp8 per channel / per tensor / block128,
    # w4a16-g128 (w4a16-g64 at gpt-oss: 2880 is no multiple of 128), w8a16 per channel, mxfp4, nvfp4
    schemes = {"fp8-per-channel", "fp8-per-tensor", "fp8-block128", "w4a16-g128", "w8a16-ch", "mxfp4", "nvfp4"}
    expected = set()
    for e, k, h, i in SHIPPED_SHAPES[:4]:  # the bench shapes: Mixtral, Qwen3-30B, DeepSeek-V3, gpt-oss-120b
        for scheme in schemes:
            if h == 2880 and scheme == "w4a16-g128":
                scheme = "w4a16-g64"
            expected.add(f"E{e}-k{k}-H{h}-I{i}-bfloat16-{scheme}-NVIDIA_H200.json")
    assert set(QUANT_TABLES) == expected


@pytest.mark.parametrize("name", QUANT_TABLES)
def test_shipped_quant_tables_hold_tuner_candidates(name):
    from moekit.quant import method_for

    meta = json.loads((tc.CONFIG_DIR / name).read_text())["meta"]
    scheme = meta["quant"]
    shape = next(s for s in SHIPPED_SHAPES if name.startswith("E{}-k{}-H{}-I{}-".format(*s)))
    key = tc.TableKey(meta["device"], *shape, torch.bfloat16, True, scheme)
    assert key.file_name() == name
    table = tc.load_table(key)
    spec = method_for(scheme).spec
    for tokens, tiles in table.items():
        for gemm, gated in ((tiles.gemm1, True), (tiles.gemm2, False)):
            assert gemm in gemm_candidates(tiles.block_m, gated, 2, spec)  # a candidate the tuner may pick
        assert tc.tiles_for(key, tokens)[1].startswith(f"tuned {name}")
    assert {256, 4096} <= set(table)
    decode = {tokens for tokens in table if tokens < 256}
    assert decode in (set(), {1, 16})  # tuned together where tuned; else the defaults serve decode
    if not decode:
        assert tc.tiles_for(key, 16) == (tc.default_tiles(key, 16), "default heuristic")
    assert tc.tiles_for(key, 16384)[0] == table[max(table)]


def test_nearest_bucket_in_log_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "CONFIG_DIR", tmp_path)
    tc.load_table.cache_clear()
    key = tc.TableKey("Some GPU", 16, 2, 64, 32, torch.bfloat16)
    small = tc.ExpertsTiles(16, tc.GemmTiles(32, 128), tc.GemmTiles(64, 128))
    large = tc.ExpertsTiles(128, tc.GemmTiles(128, 64, 8, 8, 4, tma=True), tc.GemmTiles(256, 64, 8, 8, 3))
    path = tc.write_table(key, {1: small, 1024: large}, {"device": "Some GPU"}, tmp_path)
    assert path.name == "E16-k2-H64-I32-bfloat16-Some_GPU.json"
    assert tc.tiles_for(key, 1) == (small, f"tuned {path.name} bucket 1")
    assert tc.tiles_for(key, 4)[0] == small  # log2: up to 4x away
    assert tc.tiles_for(key, 256)[0] == large
    assert tc.tiles_for(key, 10**6)[0] == large  # past the largest bucket: prefill tiles hold
    # 31 is nearer 1 than 1024, but far from both: the default heuristic, not tiles of another regime
    assert tc.tiles_for(key, 31) == (tc.default_tiles(key, 31), "default heuristic")
    assert tc.tiles_for(key, 2000)[0] == large
    tc.load_table.cache_clear()


def test_writing_some_buckets_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "CONFIG_DIR", tmp_path)
    tc.load_table.cache_clear()
    key = tc.TableKey("Some GPU", 16, 2, 64, 32, torch.bfloat16)
    small = tc.ExpertsTiles(16, tc.GemmTiles(32, 128), tc.GemmTiles(64, 128))
    mid = tc.ExpertsTiles(32, tc.GemmTiles(64, 128), tc.GemmTiles(64, 64))
    large = tc.ExpertsTiles(128, tc.GemmTiles(128, 64, 8, 8, 4), tc.GemmTiles(256, 64, 8, 8, 3))
    first = {"date": "2026-11-01", "measured_us": {"1": {"forward": 10.0}, "1024": {"forward": 90.0}}}
    tc.write_table(key, {1: small, 1024: large}, first, tmp_path)
    second = {"date": "2026-12-01", "measured_us": {"16": {"forward": 20.0}, "1": {"forward": 9.0}}}
    path = tc.write_table(key, {16: mid, 1: mid}, second, tmp_path)
    assert tc.load_table(key) == {1: mid, 16: mid, 1024: large}
    data = json.loads(path.read_text())
    assert list(data["buckets"]) == ["1", "16", "1024"] and data["meta"]["date"] == "2026-12-01"
    assert data["meta"]["measured_us"] == {"1": {"forward": 9.0}, "16": {"forward": 20.0},
                                           "1024": {"date": "2026-11-01", "forward": 90.0}}
    tc.write_table(key, {16: small}, {"date": "2026-12-02"}, tmp_path, keep_other_buckets=False)
    assert tc.load_table(key) == {16: small}
    tc.load_table.cache_clear()


def test_default_heuristic_without_a_table():
    key = tc.TableKey("No Such GPU", 128, 8, 2048, 768, torch.bfloat16)
    decode, source = tc.tiles_for(key, 1)
    assert source == "default heuristic" and decode.block_m == 16
    assert tc.tiles_for(key, 16384)[0].block_m == 128  # prefill: big row blocks


@pytest.mark.parametrize("tokens", [1, 64, 1024, 16384])
@pytest.mark.parametrize("gated", [True, False])
def test_search_space_fits_shared_memory(tokens, gated):
    for block_m in block_m_candidates(tokens, 8, 128):
        candidates = gemm_candidates(block_m, gated)
        assert candidates
        for t in candidates:
            b_tiles = 2 if gated else 1
            assert t.num_stages * (block_m * t.block_k + b_tiles * t.block_k * t.block_n) * 2 <= SHARED_MEMORY_BYTES


def test_explain_shows_the_triton_tiles_by_token_count():
    import dataclasses

    import moekit
    from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles, TableKey, describe_tiles, tile_plan

    key = TableKey("NVIDIA H200", 128, 8, 2048, 768, torch.bfloat16, True, "w4a16-g128")
    untuned = tile_plan(dataclasses.replace(key, device="Some GPU"))
    assert untuned[0].strip().startswith("1 token: decode GEMV, 1-row blocks; gemm1 16x512")
    assert all(line.endswith("(default heuristic)") for line in untuned[:4])  # 1, 16, 256, 4096 tokens
    plan = tile_plan(key)
    assert plan[0].strip().startswith("1 token: decode GEMV, 1-row blocks; gemm1 16x256")
    for line, tokens in zip(plan[:3], (1, 16, 256)):
        assert line.endswith(f"(tuned {key.file_name()} bucket {tokens})")
    assert "4096 tokens: 128-row blocks" in plan[3] and plan[3].endswith(f"(tuned {key.file_name()} bucket 4096)")
    assert "4-bit codes in bfloat16 pairs, group scales rounded to bfloat16 first" in plan[4]  # the numerics
    assert "MMA order" in plan[4]  # and the codes' order (quant/code_order.py); not for nvfp4 or int8 codes
    assert all("MMA order" not in line for q in ("nvfp4", "w8a16-g128")
               for line in tile_plan(dataclasses.replace(key, quant=q)))
    for scheme, says in (("w4a16-ch", "per-channel scale applied in fp32"), ("mxfp4", "e8m0 scales exact"),
                         ("w8a16-g128", "int8 codes in bfloat16 pairs, group scales rounded"),
                         ("fp8-per-channel", None)):
        lines = tile_plan(dataclasses.replace(key, quant=scheme))
        assert (says in lines[-1]) if says else all("pairs" not in line for line in lines)
    assert plan[3].count("swapped (W @ x^T)") == 2  # weight-only tensor-core tiles: the swapped loop
    split = ExpertsTiles(1, GemmTiles(16, 512), GemmTiles(32, 512, split_k=4))
    assert describe_tiles(split).endswith("gemm2 32x512, 4 warps, K split in 4")
    layer = moekit.MoE(128, 8, 64, 32, quant="w4a16-g32")  # on the CPU: no tiles shown
    assert "tiles on" not in str(layer.explain())
    shown = str(dataclasses.replace(layer.explain(), tiles_key=key))
    assert "tiles on NVIDIA H200:" in shown and plan[0] in shown


def test_small_row_blocks_try_grouping_an_experts_blocks():
    # group_m 16: an expert spanning several row blocks re-reads its weight tile from L2
    for block_m in (16, 32, 64):
        assert {t.group_m for t in gemm_candidates(block_m, True)} >= {16}
