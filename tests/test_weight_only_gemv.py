"""The decode GEMV (triton_ops/weight_only_gemv.py) in Triton's CPU interpreter, fp32, against the
reference backend on the same quantized weights: every code format (uint4 with and without zero
points, int8, e2m1 with e8m0 and e4m3 scales), K split in parts, K not
a multiple of the step, an expert with no tokens, top-1 routing and out-of-range ids; one, two and
four rows per block."""

import pytest
import torch

from moekit.activations import GateUpLayout
from moekit.quant import METHODS
from moekit.tolerance import relative_error
from moekit.triton_ops import weight_only_gemv as gemv
from moekit.triton_ops.experts_kernels import fused_experts
from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles
from test_triton_quant import make_case, reference, triton_out


def gemv_tiles(block_m: int, split1: int, split2: int, step: int = 64) -> ExpertsTiles:
    return ExpertsTiles(block_m, GemmTiles(16, step, 1, 1, 1, split_k=split1), GemmTiles(16, step, 1, 1, 1, split_k=split2))


@pytest.mark.parametrize("scheme,block_m,split,hidden,inter,activation,layout", [
    ("w4a16-g32", 1, 2, 64, 96, "silu", GateUpLayout.CONCATENATED),
    ("w4a16-g32-asym", 2, 1, 96, 64, "swigluoai", GateUpLayout.INTERLEAVED),
    ("w8a16-ch-asym", 1, 3, 48, 80, "silu", GateUpLayout.CONCATENATED),  # K tails of 48 and 16 past 64-code steps
    ("w8a16-g32", 2, 2, 64, 64, "gelu", GateUpLayout.CONCATENATED),
    ("mxfp4", 1, 1, 96, 64, "swigluoai", GateUpLayout.INTERLEAVED),
    ("nvfp4", 2, 2, 64, 160, "silu", GateUpLayout.CONCATENATED),
    ("w4a16-g32-asym", 4, 2, 64, 96, "silu", GateUpLayout.CONCATENATED),  # 4-row blocks: padding rows
    ("mxfp4", 4, 1, 96, 64, "swigluoai", GateUpLayout.INTERLEAVED),
    ("w8a16-ch", 4, 1, 48, 64, "silu", GateUpLayout.CONCATENATED),
])
def test_decode_gemv_matches_reference(scheme, block_m, split, hidden, inter, activation, layout):
    # 5 tokens, top-2 of 4 experts, the last expert without tokens, biases: blocks of one and two
    # rows, padding rows in the two-row blocks
    case = make_case(scheme, tokens=5, experts=4, hidden=hidden, inter=inter, bias=True, activation=activation,
                     layout=layout)
    out = triton_out(case, gemv_tiles(block_m, split, split))
    assert relative_error(out, reference(case).double()) <= 1e-5


@pytest.mark.parametrize("scheme", ["w4a16-g32-asym", "mxfp4"])
def test_top1_with_split_k_and_out_of_range_ids(scheme):
    # top-1: gemm2's parts are summed by the top-k sum (not written into the output directly); an
    # out-of-range id (token 1) contributes nothing: its output row is zeros
    case = make_case(scheme, tokens=4, experts=3, top_k=1, hidden=64, inter=64, empty_experts=0)
    ids = case.topk_ids.clone()
    ids[1, 0] = 7
    out = triton_out(case, gemv_tiles(1, 2, 2), ids=ids)
    expected = reference(case, ids=torch.where(ids < 3, ids, 0)).double()
    expected[1] = 0
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert relative_error(out, expected) <= 1e-5


def test_operand_layout_puts_each_code_position_together():
    # 4-bit codes, 4-word slots: code j of slot s of block b is at b*256 + j*32 + s*4 + word
    spec = METHODS["w4a16-g128"].spec
    x = torch.arange(1, 2 * 256 + 1, dtype=torch.float32)[None, :]
    op = gemv.prepare_operand(x, spec)
    assert op.values.shape == (1, 512)
    values = op.values[0]
    factors = torch.tensor([2.0 ** (64 - p) for p in (0, 4, 8, 12, 16, 8, 12, 16)])
    for col in (0, 1, 7, 8, 37, 255, 256, 300, 511):
        block, in_block = divmod(col, 256)
        slot, in_slot = divmod(in_block, 32)
        word, j = divmod(in_slot, 8)
        assert values[block * 256 + j * 32 + slot * 4 + word] == (col + 1) * factors[j]


def test_default_tiles_pick_the_gemv_for_about_a_row_per_expert():
    w4 = METHODS["w4a16-g128"].spec
    decode = gemv.decode_gemv_tiles(w4, 128, 8, 2048, 768, 16)  # Qwen3-30B-A3B, 16 tokens: 1 row per expert
    assert decode.block_m == 1 and decode.gemm2.block_k == 256  # 768 = 3 steps of 256
    assert gemv.decode_gemv_tiles(w4, 8, 2, 4096, 14336, 16) is None  # Mixtral, 16 tokens: 4 rows per expert
    mixtral_1 = gemv.decode_gemv_tiles(w4, 8, 2, 4096, 14336, 1)
    assert mixtral_1.gemm2.split_k == 4  # 2 experts x 128 tiles of 32 rows: too few programs unsplit
    assert gemv.decode_gemv_tiles(METHODS["fp8-per-channel"].spec, 128, 8, 2048, 768, 1) is None  # w8a8
    w8 = gemv.decode_gemv_tiles(METHODS["w8a16-ch"].spec, 128, 8, 2048, 768, 1)  # int8: the same 256 bytes a step
    assert (w8.gemm1.block_k, w8.gemm2.block_k) == (256, 256)
    assert (decode.gemm1.block_k, mixtral_1.gemm2.block_k) == (512, 512)


def test_split_k_outside_the_gemv_is_refused():
    case = make_case("fp8-per-channel", tokens=3, experts=3, hidden=64, inter=64)
    w = case.weights
    tiles = ExpertsTiles(16, GemmTiles(32, 32), GemmTiles(32, 32, split_k=2))
    with pytest.raises(ValueError, match="split_k > 1"):
        fused_experts(case.x, w.w13, w.w2, case.topk_weights, case.topk_ids, case.activation, case.layout, tiles,
                      quant=w.quant)


def test_three_row_blocks_are_refused():
    case = make_case("w4a16-g32", tokens=3, experts=3, hidden=64, inter=64)
    w = case.weights
    with pytest.raises(ValueError, match="1, 2 or 4 rows"):
        fused_experts(case.x, w.w13, w.w2, case.topk_weights, case.topk_ids, case.activation, case.layout,
                      gemv_tiles(3, 1, 1), quant=w.quant)


def test_act_order_weights_in_small_blocks_are_refused():
    case = make_case("w4a16-g32", tokens=3, experts=3, hidden=64, inter=64, g_idx=True)
    w = case.weights
    with pytest.raises(ValueError, match="decode GEMV"):
        fused_experts(case.x, w.w13, w.w2, case.topk_weights, case.topk_ids, case.activation, case.layout,
                      gemv_tiles(1, 1, 1), quant=w.quant)


@pytest.mark.parametrize("scheme", ["w4a16-g32", "nvfp4"])
def test_fp16_activations(scheme):
    # fp16 tokens in, fp16 out: the operand and the sums are fp32, so at most the output's fp16
    # rounding separates the GEMV from the reference (measured: 0 to 1.5e-5)
    case = make_case(scheme, tokens=4, experts=3, hidden=64, inter=64, dtype=torch.float16)
    out = triton_out(case, gemv_tiles(1, 1, 2))
    assert out.dtype == torch.float16
    assert relative_error(out, reference(case).double()) <= 1e-3


def test_act_order_weights_get_tensor_core_tiles_at_decode(monkeypatch):
    # the default tiles would pick the GEMV for a bf16 layer on a GPU at one row per expert; act-order
    # weights (g_idx) cannot run it, so the backend asks for tiles without it (and still computes)
    import moekit.triton_ops.tile_configs as tc
    from moekit.experts import TritonExperts

    key = tc.TableKey("NVIDIA H200", 4, 2, 64, 64, torch.bfloat16, True, "w4a16-g32")
    assert tc.tiles_for(key, 1)[0].block_m == 1
    assert tc.tiles_for(key, 1, gemv=False)[0].block_m == 16
    asked = []
    real = tc.tiles_for_call

    def spy(*args):
        asked.append(args[-1])
        return real(*args)

    monkeypatch.setattr(tc, "tiles_for_call", spy)
    for g_idx in (False, True):
        case = make_case("w4a16-g32", tokens=2, experts=4, hidden=64, inter=64, g_idx=g_idx)
        w = case.weights
        out = TritonExperts().apply(case.x, case.topk_weights, case.topk_ids, w, case.activation, case.layout)
        assert relative_error(out, reference(case).double()) <= 1e-5
    assert asked == [True, False]


@pytest.mark.parametrize("scheme,block_m,split", [("w4a16-g32-asym", 1, 2), ("mxfp4", 2, 1), ("nvfp4", 4, 2)])
def test_one_token_runs_without_alignment(monkeypatch, scheme, block_m, split):
    # One token: block m holds pair m (align.pairs_in_place), no alignment launch; the finishing
    # kernel of gemm1's split K and gemm2's parts read the same blocks; an out-of-range id adds nothing.
    import moekit.triton_ops.experts_kernels as ek

    def no_alignment(*args, **kwargs):
        raise AssertionError("a single token must not launch the alignment")

    monkeypatch.setattr(ek, "align_pairs_by_expert", no_alignment)
    case = make_case(scheme, tokens=1, experts=5, top_k=3, hidden=64, inter=96, bias=True, empty_experts=0)
    out = triton_out(case, gemv_tiles(block_m, split, split))
    assert relative_error(out, reference(case).double()) <= 1e-5
    ids = case.topk_ids.clone()
    ids[0, 1] = 5
    out = triton_out(case, gemv_tiles(block_m, split, split), ids=ids)
    kept = case.topk_weights.clone()
    kept[0, 1] = 0.0
    expected = reference(case, ids=ids.clamp(max=4), topk_weights=kept).double()
    assert relative_error(out, expected) <= 1e-5


@pytest.mark.parametrize("scheme", ["mxfp4", "nvfp4"])
def test_decode_gemv_reads_word_padded_scales(scheme):
    # The layer keeps one-byte scales with rows padded to whole words (quant/scale_layout.py; here
    # 5 and 3 groups a row): the GEMV reads the strided view as it is.
    import dataclasses

    from moekit.quant.scale_layout import word_padded

    case = make_case(scheme, tokens=3, experts=3, hidden=5 * 32 if scheme == "mxfp4" else 5 * 16,
                     inter=3 * 32 if scheme == "mxfp4" else 3 * 16, bias=True)
    w = case.weights
    padded = dataclasses.replace(w, w13=dataclasses.replace(w.w13, scale=word_padded(w.w13.scale)),
                                 w2=dataclasses.replace(w.w2, scale=word_padded(w.w2.scale)))
    assert not padded.w13.scale.is_contiguous()
    case = dataclasses.replace(case, weights=padded)
    out = triton_out(case, gemv_tiles(1, 1, 1, step=32))
    assert relative_error(out, reference(case).double()) <= 1e-5
