"""The Triton backend's MMA order of packed 4-bit codes (quant/code_order.py): its definition, which
matrices take it, every kernel path that reads it (the swapped tensor-core loop with and without
scale words and K tails, fp32 and the fp16 pair numerics; the decode GEMV with a split K) against
the reference on the same codes in plain order, the paths that refuse it, and the layer keeping its
codes in MMA order while its state dict stays plain. nvfp4's runs of two scale groups (opted in by
MOEKIT_EXPERIMENTAL_NVFP4_MMA_ORDER) alike."""

import dataclasses

import pytest
import torch

import moekit
from moekit.quant import METHODS, QuantizedMatrix
from moekit.quant.code_order import (NVFP4_MMA_ORDER_FLAG, in_mma_order, mma_order_fits, plain, to_mma_order,
                                     to_plain_order)
from moekit.quant.dequant import dequantize
from moekit.tolerance import relative_error
from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles
from test_triton_quant import make_case, reference, triton_out
from test_weight_only_gemv import gemv_tiles


def test_stored_nibble_of_each_plain_code():
    # within each 16-byte run, plain byte 8c + 4h + q is pair x = 2c + h of word q (bytes 4q..4q+3):
    # its low code at nibble 4c + h of the word, its high code at nibble 4c + h + 2
    data = torch.randint(0, 256, (2, 48), dtype=torch.uint8)
    mma = to_mma_order(data)
    for row in range(2):
        for run in range(3):
            for q in range(4):
                word = sum(int(mma[row, 16 * run + 4 * q + i]) << (8 * i) for i in range(4))
                for c in range(2):
                    for h in range(2):
                        plain_byte = int(data[row, 16 * run + 8 * c + 4 * h + q])
                        assert word >> (4 * (4 * c + h)) & 0xF == plain_byte & 0xF
                        assert word >> (4 * (4 * c + h + 2)) & 0xF == plain_byte >> 4
    assert torch.equal(to_plain_order(mma), data)
    assert not torch.equal(mma, data)


def test_which_matrices_take_the_mma_order(monkeypatch):
    def fits(scheme, k, g_idx=False):
        spec = METHODS[scheme].spec
        m = METHODS[scheme].quantize(torch.randn(1, 8, k))
        if g_idx:
            m = dataclasses.replace(m, g_idx=torch.zeros(1, k, dtype=torch.int32))
        return mma_order_fits(spec, m)

    assert fits("w4a16-g128", 256) and fits("w4a16-g32-asym", 96) and fits("w4a16-ch", 160) and fits("mxfp4", 64)
    assert not fits("nvfp4", 128)  # 16-code groups, runs of two: only when opted in (not yet run on a GPU)
    monkeypatch.setenv(NVFP4_MMA_ORDER_FLAG, "1")
    assert fits("nvfp4", 128) and fits("nvfp4", 64)
    assert not fits("nvfp4", 96)  # rows of whole scale words (four groups) only
    assert not fits("w8a16-g128", 256) and not fits("fp8-per-channel", 256)  # not packed
    rows_of_40_bytes = QuantizedMatrix(torch.zeros(1, 8, 40, dtype=torch.uint8), torch.ones(1, 8, 3))
    assert not mma_order_fits(METHODS["w4a16-g32"].spec, rows_of_40_bytes)  # not whole 16-byte runs
    assert not fits("w4a16-g32", 128, g_idx=True)  # act-order


@pytest.mark.parametrize("scheme", ["w4a16-g128", "mxfp4"])
def test_reference_dequantizes_either_order_alike(scheme):
    m = METHODS[scheme].quantize(torch.randn(3, 16, 256))
    spec = METHODS[scheme].spec
    assert torch.equal(dequantize(in_mma_order(m), spec), dequantize(m, spec))
    assert torch.equal(plain(in_mma_order(m)).data, m.data)


def _mma_case(case):
    w = case.weights
    return dataclasses.replace(case, weights=dataclasses.replace(w, w13=in_mma_order(w.w13), w2=in_mma_order(w.w2)))


@pytest.mark.parametrize("scheme,hidden,inter,dtype", [
    ("w4a16-g128-asym", 256, 128, torch.float32),
    ("w4a16-g32", 96, 160, torch.float16),  # K tails (160 = 2 steps of 64 + 32), fp16 pair numerics
    ("w4a16-g32-asym", 160, 96, torch.float32),
    ("w4a16-g64", 128, 192, torch.float16),
    ("mxfp4", 384, 256, torch.float32),  # scale words: four 32-code groups a step
    ("mxfp4", 160, 96, torch.float32),  # scale words, then single-group steps for the tail
    ("nvfp4", 128, 192, torch.float32),  # runs of two 16-code groups: a scale word's two runs a step
    ("nvfp4", 192, 64, torch.float16),
])
def test_swapped_loop_reads_mma_order(scheme, hidden, inter, dtype):
    case = make_case(scheme, tokens=9, hidden=hidden, inter=inter, bias=True, dtype=dtype)
    swapped = ExpertsTiles(16, GemmTiles(32, 64, 1, swap_ab=True), GemmTiles(64, 128, 1, swap_ab=True))
    out = triton_out(_mma_case(case), swapped)
    assert relative_error(out, reference(case).double()) <= (1e-3 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("scheme,block_m,split,hidden", [
    ("w4a16-g32-asym", 1, 2, 64), ("mxfp4", 2, 1, 64), ("w4a16-ch", 4, 3, 64),
    ("nvfp4", 1, 2, 128), ("nvfp4", 4, 1, 192),  # a slot (a run) of two groups, each word's halves scaled apart
])
def test_decode_gemv_reads_mma_order(scheme, block_m, split, hidden):
    case = make_case(scheme, tokens=5, experts=4, hidden=hidden, inter=96, bias=True)
    out = triton_out(_mma_case(case), gemv_tiles(block_m, split, split))
    assert relative_error(out, reference(case).double()) <= 1e-5


def test_nvfp4_in_mma_order_matches_plain_order_bit_for_bit():
    # bf16 under the interpreter: the paired e2m1 emulation, group by group after the plain order is
    # restored, against the plain-order byte path on the same codes (the interpreter's bf16 dots are
    # wrong, docs/facts.md, but the same on both)
    case = make_case("nvfp4", tokens=9, hidden=128, inter=192, bias=True, dtype=torch.bfloat16)
    swapped = ExpertsTiles(16, GemmTiles(32, 64, 1, swap_ab=True), GemmTiles(64, 128, 1, swap_ab=True))
    assert torch.equal(triton_out(_mma_case(case), swapped), triton_out(case, swapped))


def test_nvfp4_in_mma_order_needs_rows_of_whole_scale_words():
    case = _mma_case(make_case("nvfp4", tokens=5, hidden=96, inter=64))  # 96 codes: six groups, a word and a half
    with pytest.raises(ValueError, match="runs of two scale groups"):
        triton_out(case, ExpertsTiles(16, GemmTiles(32, 64, 1, swap_ab=True), GemmTiles(32, 64, 1, swap_ab=True)))


def test_unswapped_loop_and_mixed_orders_refused():
    case = _mma_case(make_case("w4a16-g32", tokens=5, hidden=64, inter=64))
    with pytest.raises(ValueError, match="MMA order"):
        triton_out(case, ExpertsTiles(16, GemmTiles(32, 64, 1), GemmTiles(32, 64, 1)))
    mixed = dataclasses.replace(case, weights=dataclasses.replace(case.weights, w2=plain(case.weights.w2)))
    with pytest.raises(ValueError, match="code order"):
        triton_out(mixed, gemv_tiles(1, 1, 1))


def test_layer_keeps_mma_order_and_a_plain_state_dict(monkeypatch):
    monkeypatch.setenv("MOEKIT_BACKEND", "triton")
    torch.manual_seed(0)
    layer = moekit.MoE(4, 2, 128, 96, quant="w4a16-g32", dtype=torch.float32, device="cpu")
    assert layer.explain().backend == "triton"
    assert layer._mma_order == {"w13": True, "w2": True} and layer.kernel.weights.w13.mma_order
    state = layer.state_dict()
    assert torch.equal(to_mma_order(state["w13"]), layer.w13) and torch.equal(to_mma_order(state["w2"]), layer.w2)
    x = torch.randn(6, 128)
    with torch.no_grad():
        out = layer(x)
        monkeypatch.setenv("MOEKIT_BACKEND", "reference")
        ref = moekit.MoE(4, 2, 128, 96, quant="w4a16-g32", dtype=torch.float32, device="cpu")
        ref.load_state_dict(state)
        assert ref.explain().backend == "reference" and ref._mma_order == {"w13": False, "w2": False}
        assert torch.equal(ref.w13, state["w13"])
        assert relative_error(out, ref(x).double()) <= 1e-3
        monkeypatch.setenv("MOEKIT_BACKEND", "triton")
        again = moekit.MoE(4, 2, 128, 96, quant="w4a16-g32", dtype=torch.float32, device="cpu")
        again.load_state_dict(state)  # plain codes in, MMA order kept, same output
        assert again._mma_order == {"w13": True, "w2": True}
        assert torch.equal(again(x), out)


def test_layer_keeps_nvfp4_in_mma_order_only_when_opted_in(monkeypatch):
    monkeypatch.setenv("MOEKIT_BACKEND", "triton")
    x = torch.randn(6, 128)
    layer = moekit.MoE(4, 2, 128, 64, quant="nvfp4", dtype=torch.float32, device="cpu")
    assert layer.explain().backend == "triton" and layer._mma_order == {"w13": False, "w2": False}
    monkeypatch.setenv(NVFP4_MMA_ORDER_FLAG, "1")
    ordered = moekit.MoE(4, 2, 128, 64, quant="nvfp4", dtype=torch.float32, device="cpu")
    ordered.load_state_dict(layer.state_dict())
    assert ordered._mma_order == {"w13": True, "w2": True}
    assert torch.equal(to_plain_order(ordered.w13), layer.w13)
    with torch.no_grad():
        assert relative_error(ordered(x), layer(x).double()) <= 1e-5


def test_tensors_the_caller_owns_are_the_only_ones_reordered():
    # moekit.fused_moe and a Hugging Face module served through experts_implementation="moekit"
    # hand their own tensors to build_kernel, once per call or per kernel rebuild: reordering those
    # in place would scramble them on the second build. Only the layer (own_codes) reorders.
    from moekit.activations import GateUpLayout, parse_activation
    from moekit.hardware import Environment
    from moekit.kernel.build import build_kernel
    from moekit.problem import MoEProblem

    case = make_case("w4a16-g32", tokens=5, experts=4, hidden=64, inter=64)
    before = case.weights.w13.data.clone()
    problem = MoEProblem(4, 2, 64, 64, torch.float32, "cpu", parse_activation("silu"),
                         gate_up_layout=GateUpLayout.CONCATENATED, quant="w4a16-g32")
    env = Environment(False, "cpu", None, True, None, triton_interpreter=True)
    for _ in range(2):
        kernel, selection = build_kernel(problem, case.weights, env, "triton")
        assert selection.chosen.name == "triton" and not kernel.weights.w13.mma_order
        assert torch.equal(case.weights.w13.data, before)
    kernel, _ = build_kernel(problem, case.weights, env, "triton", own_codes=True)
    assert kernel.weights.w13.mma_order and torch.equal(case.weights.w13.data, to_mma_order(before))
    again, _ = build_kernel(problem, kernel.weights, env, "triton", own_codes=True)  # already in order: kept
    assert again.weights.w13.mma_order and torch.equal(case.weights.w13.data, to_mma_order(before))
    back, _ = build_kernel(problem, kernel.weights, env, "reference", own_codes=True)
    assert not back.weights.w13.mma_order and torch.equal(case.weights.w13.data, before)
