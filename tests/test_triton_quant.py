"""The Triton experts kernels on quantized weights, in Triton's CPU interpreter (fp32 and fp16: bf16
dots are wrong there, docs/facts.md), against the reference backend on the same quantized weights.

Weight-only schemes: the same dequantized weights, so fp32 agrees to rounding. w8a8 schemes: the
reference fake-quantizes the activations as the kernels quantize them (per tensor over all tokens,
gemm2's input over the real pairs' rows only). The kernels round onto the fp8 grid in fp32
arithmetic before the (then exact) cast, so the interpreter's own fp8 rounding never enters and
the codes equal torch's bit for bit (checked directly in the activation-quant tests)."""

import dataclasses

import pytest
import torch
import triton
import triton.language as tl

import moekit
from moekit.activations import GateUpLayout, parse_activation
from moekit.experts import ExpertWeights, ReferenceExperts, TritonExperts
from moekit.hardware import Environment
from moekit.problem import MoEProblem
from moekit.quant import METHODS, QuantizedMatrix, formats
from moekit.quant.dequant import quantize_activations
from moekit.tolerance import relative_error
from moekit.triton_ops import activation_quant
from moekit.triton_ops import quant_formats as qf
from moekit.triton_ops.activation_quant import RowMap, quantize_rows
from moekit.triton_ops.align import align_pairs_by_expert
from moekit.triton_ops.experts_kernels import fused_experts
from moekit.triton_ops.quant_gemm import quant_block_k
from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles, TableKey, default_tiles, tiles_for

SCHEMES = sorted(METHODS)
W8A8 = [s for s in SCHEMES if not METHODS[s].spec.weight_only]
# Row block 16; gemm1 K steps of 64 (two groups of 32 per step, nvfp4's cut to 32 = two groups of 16,
# or one step inside a group of 64/128); gemm2 a narrower K step.
TILES = ExpertsTiles(16, GemmTiles(32, 64, 2), GemmTiles(32, 32, 1))


def tolerance(scheme: str) -> float:
    """fp32: weight-only agrees to rounding (~4e-7 measured); w8a8 too, unless an fp32 sum lands on
    an fp8/int8 rounding boundary and one code moves by a step (far below 1e-3)."""
    return 1e-3


@dataclasses.dataclass
class Case:
    x: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    weights: ExpertWeights
    activation: object
    layout: GateUpLayout


def make_case(scheme, tokens=13, experts=5, top_k=2, hidden=128, inter=128, *, dtype=torch.float32,
              activation="silu", layout=GateUpLayout.CONCATENATED, bias=False, empty_experts=1,
              g_idx=False) -> Case:
    """Random float weights quantized with ``scheme``; the last ``empty_experts`` experts get no tokens."""
    method = METHODS[scheme]
    act = parse_activation(activation)
    rows = 2 * inter if act.gated else inter
    x = torch.randn(tokens, hidden).to(dtype)
    w13 = method.quantize(torch.randn(experts, rows, hidden) / hidden**0.5)
    w2 = method.quantize(torch.randn(experts, hidden, inter) / inter**0.5)
    if g_idx:
        w13, w2 = with_act_order(w13, method.spec), with_act_order(w2, method.spec)
    logits = torch.randn(tokens, experts)
    if empty_experts:
        logits[:, experts - empty_experts:] = -1e4
    topk_weights, topk_ids = moekit.route(logits, top_k)
    b13 = (0.1 * torch.randn(experts, rows)).to(dtype) if bias else None
    b2 = (0.1 * torch.randn(experts, hidden)).to(dtype) if bias else None
    static = method.spec.act_static
    a13 = (x.float().abs().max() / 448 * 1.1).reshape(()) if static else None
    a2 = torch.tensor(0.002) if static else None  # small: some of gemm2's inputs saturate
    weights = ExpertWeights(w13, w2, b13, b2, quant=method.spec, a13_scale=a13, a2_scale=a2)
    return Case(x, topk_weights, topk_ids, weights, act, layout)


def with_act_order(m: QuantizedMatrix, spec) -> QuantizedMatrix:
    """GPTQ act-order: column k takes its scale (and zero point) from group g_idx[k], a random
    permutation's group rather than k // group."""
    e, k = m.data.shape[0], m.data.shape[2] * (2 if spec.weight.packed else 1)
    g_idx = torch.stack([torch.randperm(k) // spec.group_k for _ in range(e)]).to(torch.int32)
    return dataclasses.replace(m, g_idx=g_idx)


def reference(case: Case, ids=None, topk_weights=None) -> torch.Tensor:
    return ReferenceExperts().apply(case.x, case.topk_weights if topk_weights is None else topk_weights,
                                    case.topk_ids if ids is None else ids, case.weights, case.activation,
                                    case.layout)


def triton_out(case: Case, tiles=TILES, ids=None) -> torch.Tensor:
    w = case.weights
    poisoned = torch.full_like(case.x, float("nan"))
    out = fused_experts(case.x, w.w13, w.w2, case.topk_weights, case.topk_ids if ids is None else ids,
                        case.activation, case.layout, tiles, w.w13_bias, w.w2_bias, out=poisoned, quant=w.quant,
                        a13_scale=w.a13_scale, a2_scale=w.a2_scale)
    assert out.data_ptr() == poisoned.data_ptr()
    assert torch.isfinite(out).all(), "unwritten (NaN-poisoned) or non-finite output elements"
    return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_matches_reference(scheme):
    # Biases, an expert with no tokens, 13 tokens (rows not a multiple of the row block), E = 5;
    # every other scheme takes gpt-oss's interleaved gate/up and clamped SwiGLU.
    odd = SCHEMES.index(scheme) % 2
    case = make_case(scheme, bias=True, activation="swigluoai" if odd else "silu",
                     layout=GateUpLayout.INTERLEAVED if odd else GateUpLayout.CONCATENATED)
    assert relative_error(triton_out(case), reference(case).double()) <= tolerance(scheme)


@pytest.mark.parametrize("scheme,hidden,inter", [
    ("mxfp4", 160, 96),  # K tails of 32 (gemm1) and 32 (gemm2) past the 64/32-wide K steps
    ("nvfp4", 144, 80),  # 16-column groups, a tail of one group
    ("w4a16-g32-asym", 96, 160),
    ("w8a16-g32", 224, 96),
])
def test_k_not_a_multiple_of_the_k_step(scheme, hidden, inter):
    case = make_case(scheme, tokens=7, hidden=hidden, inter=inter, bias=True)
    assert relative_error(triton_out(case), reference(case).double()) <= 1e-3


WEIGHT_ONLY = [s for s in SCHEMES if METHODS[s].spec.weight_only]


@pytest.mark.parametrize("scheme", WEIGHT_ONLY)
def test_swapped_weight_only_loop_matches_reference(scheme):
    # out^T = W @ x^T (weight_only_swapped.py): K steps of 64 cut to one 32- or 16-column group, or
    # inside a group of 64/128 or a per-channel scale; 16 weight rows per program; 11 tokens, an empty
    # expert, biases, and the interleaved clamped SwiGLU for every other scheme.
    odd = WEIGHT_ONLY.index(scheme) % 2
    case = make_case(scheme, tokens=11, bias=True, activation="swigluoai" if odd else "silu",
                     layout=GateUpLayout.INTERLEAVED if odd else GateUpLayout.CONCATENATED)
    swapped = ExpertsTiles(16, GemmTiles(16, 64, 1, swap_ab=True), GemmTiles(32, 32, 1, swap_ab=True))
    assert relative_error(triton_out(case, swapped), reference(case).double()) <= 1e-3


@pytest.mark.parametrize("scheme,hidden,inter,dtype", [
    ("mxfp4", 160, 96, torch.float32),  # K tails past the K steps
    ("nvfp4", 144, 80, torch.float16),
    ("w4a16-g32-asym", 96, 160, torch.float16),
    ("w8a16-ch", 224, 96, torch.float32),
    ("w8a16-g32-asym", 96, 160, torch.float16),  # fp16: the int8 pair numerics (paired_dequant.py)
    ("w8a16-ch", 224, 96, torch.float16),
])
def test_swapped_weight_only_loop_k_tails_and_fp16(scheme, hidden, inter, dtype):
    case = make_case(scheme, tokens=7, hidden=hidden, inter=inter, bias=True, dtype=dtype)
    swapped = ExpertsTiles(16, GemmTiles(32, 64, 1, swap_ab=True), GemmTiles(16, 64, 1, swap_ab=True))
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    assert relative_error(triton_out(case, swapped), reference(case).double()) <= tol


@pytest.mark.parametrize("scheme,hidden,inter", [
    ("mxfp4", 160, 96),  # 5 and 3 groups of 32 a row (gpt-oss: 90): whole words, then single steps
    ("nvfp4", 80, 48),  # 5 and 3 groups of 16
    ("mxfp4", 384, 256),  # whole words only (12 and 8 groups), padded rows all the same
])
def test_scale_words_with_rows_padded_to_words(scheme, hidden, inter):
    # One-byte scales whose rows do not fill whole 32-bit words are laid out padded (as the layer
    # keeps them: quant/scale_layout.py); the swapped loop then reads them as words, and the K
    # past the last whole word in single steps with byte scales.
    from moekit.quant.scale_layout import word_padded
    from moekit.triton_ops.launcher import capture_launches

    case = make_case(scheme, tokens=9, hidden=hidden, inter=inter, bias=True)
    w = case.weights
    padded = dataclasses.replace(w, w13=dataclasses.replace(w.w13, scale=word_padded(w.w13.scale)),
                                 w2=dataclasses.replace(w.w2, scale=word_padded(w.w2.scale)))
    case = dataclasses.replace(case, weights=padded)
    group = METHODS[scheme].spec.group_k
    swapped = ExpertsTiles(16, GemmTiles(32, group, 1, swap_ab=True), GemmTiles(32, group, 1, swap_ab=True))
    with capture_launches() as launches:
        triton_out_unchecked(case, swapped)
    assert [l.constexprs["SCALE_WORDS"] for l in launches if "SCALE_WORDS" in l.constexprs] == [True, True]
    assert relative_error(triton_out(case, swapped), reference(case).double()) <= 1e-3


def triton_out_unchecked(case: Case, tiles) -> None:
    w = case.weights
    fused_experts(case.x, w.w13, w.w2, case.topk_weights, case.topk_ids, case.activation, case.layout, tiles,
                  w.w13_bias, w.w2_bias, quant=w.quant)


@pytest.mark.parametrize("scheme", ["mxfp4", "nvfp4"])
def test_scale_word_steps_on_the_simulated_ptx(scheme, monkeypatch):
    # Steps of four groups (one scale word: the four dequantized group tiles side by side, one dot)
    # and the single steps past the last whole word, with e2m1's inline PTX run by tests/ptx_sim.py:
    # bit for bit the forward on the fp32 route (exact products), and the words were read.
    import ptx_sim
    from moekit.quant.scale_layout import word_padded
    from moekit.triton_ops import quant_gemm
    from moekit.triton_ops.launcher import capture_launches
    from moekit.triton_ops.paired_dequant import PAIRED_PTX

    group = METHODS[scheme].spec.group_k
    case = make_case(scheme, tokens=6, experts=3, hidden=5 * group, inter=3 * group, bias=True, dtype=torch.bfloat16)
    w = case.weights
    case = dataclasses.replace(case, weights=dataclasses.replace(
        w, w13=dataclasses.replace(w.w13, scale=word_padded(w.w13.scale)),
        w2=dataclasses.replace(w.w2, scale=word_padded(w.w2.scale))))
    swapped = ExpertsTiles(16, GemmTiles(32, group, 1, swap_ab=True), GemmTiles(16, group, 1, swap_ab=True))
    interpreted = triton_out(case, swapped)
    monkeypatch.setattr(quant_gemm, "paired_mode", lambda *args: PAIRED_PTX.value)
    with capture_launches() as launches:  # (captured, not run)
        triton_out_unchecked(case, swapped)
    assert [(l.constexprs["SCALE_WORDS"], l.constexprs["PAIRED"]) for l in launches if "SCALE_WORDS" in l.constexprs] \
        == [(True, PAIRED_PTX.value)] * 2
    with ptx_sim.patched_interpreter():
        simulated = triton_out(case, swapped)
    assert torch.equal(simulated, interpreted)


@pytest.mark.parametrize("scheme,dtype", [
    ("w8a16-g32-asym", torch.float16), ("w8a16-ch", torch.float16), ("w8a16-ch-asym", torch.bfloat16),
    ("w4a16-g32-asym", torch.float16), ("w4a16-ch", torch.float16), ("w4a16-ch-asym", torch.bfloat16),
    ("mxfp4", torch.bfloat16), ("nvfp4", torch.bfloat16)])
def test_swapped_loop_on_the_simulated_ptx(scheme, dtype, monkeypatch):
    # The whole fused forward with the inline PTX of the pair dequantization, which the interpreter
    # runs through tests/ptx_sim.py, equals the forward on the numerics the interpreter runs otherwise
    # (the integer formats' fp32 emulation, e2m1's fp32 route: exact products), bit for bit. bf16 too:
    # both runs take the interpreter's same (wrong) bf16 dots on the same tiles (integer formats per
    # channel: a group scale's product is rounded, which the interpreter's fp32 -> bf16 cast
    # truncates). fp16 against the reference as well.
    import ptx_sim
    from moekit.triton_ops import quant_gemm
    from moekit.triton_ops.paired_dequant import PAIRED_PTX

    case = make_case(scheme, tokens=5, experts=3, hidden=64, inter=32, bias=True, dtype=dtype,
                     activation="swigluoai" if scheme == "w8a16-ch-asym" else "silu",
                     layout=GateUpLayout.INTERLEAVED if scheme == "w8a16-ch-asym" else GateUpLayout.CONCATENATED)
    swapped = ExpertsTiles(16, GemmTiles(32, 64, 1, swap_ab=True), GemmTiles(16, 64, 1, swap_ab=True))
    interpreted = triton_out(case, swapped)
    monkeypatch.setattr(quant_gemm, "paired_mode", lambda *args: PAIRED_PTX.value)
    with ptx_sim.patched_interpreter():
        simulated = triton_out(case, swapped)
    assert torch.equal(simulated, interpreted)
    if dtype == torch.float16:
        assert relative_error(simulated, reference(case).double()) <= 1e-2


def test_swapped_tiles_refused_where_the_swapped_loop_does_not_run():
    swapped = ExpertsTiles(16, GemmTiles(32, 64, 1, swap_ab=True), GemmTiles(32, 32, 1))
    for case in (make_case("fp8-per-channel", tokens=3), make_case("w4a16-g32-asym", tokens=3, g_idx=True)):
        with pytest.raises(ValueError, match="swap_ab"):
            triton_out(case, swapped)
    # act-order weights (gemv=False) get swapped default tiles unswapped
    key = TableKey("Some GPU", 5, 2, 128, 128, torch.float16, True, "w4a16-g32")
    assert default_tiles(key, 4096).gemm1.swap_ab
    assert not tiles_for(key, 4096, gemv=False)[0].gemm1.swap_ab


def test_swapped_k_step_stays_in_one_group():
    for scheme, asked, step in [("mxfp4", 128, 32), ("nvfp4", 64, 16), ("w4a16-g128", 64, 64), ("w8a16-ch", 256, 256)]:
        assert quant_block_k(METHODS[scheme].spec, asked, swap_ab=True) == step


@pytest.mark.parametrize("scheme", ["w4a16-g32-asym", "w8a16-g64-asym", "w4a16-g128"])
def test_act_order_g_idx(scheme):
    case = make_case(scheme, tokens=9, g_idx=True)
    assert case.weights.w13.g_idx is not None
    assert relative_error(triton_out(case), reference(case).double()) <= 1e-3


@pytest.mark.parametrize("scheme", ["mxfp4", "w4a16-ch-asym", "fp8-per-tensor", "int8-w8a8"])
def test_one_token_top_1(scheme):
    # top_k = 1: gemm2 writes the token's row itself.
    case = make_case(scheme, tokens=1, experts=3, top_k=1, empty_experts=0)
    assert relative_error(triton_out(case), reference(case).double()) <= tolerance(scheme)


@pytest.mark.parametrize("scheme", ["nvfp4", "fp8-per-tensor", "fp8-block128"])
def test_out_of_range_ids_contribute_nothing(scheme):
    case = make_case(scheme, tokens=20, experts=6, top_k=3, empty_experts=0)
    bad = torch.rand(case.topk_ids.shape) < 0.3
    bad_values = torch.tensor([-1, 6, 7, 10**6], dtype=torch.int32)[torch.randint(0, 4, case.topk_ids.shape)]
    ids = torch.where(bad, bad_values, case.topk_ids)
    # The reference skips out-of-range pairs too (and leaves them out of gemm2's per-tensor scale).
    ref = reference(case, ids=ids)
    assert bad.any()
    assert relative_error(triton_out(case, ids=ids), ref.double()) <= tolerance(scheme)


@pytest.mark.parametrize("scheme,gemm1", [
    ("fp8-block128", GemmTiles(128, 64, 1)),  # one gemm1 tile = one 128-column group (partial: I = 192)
    ("fp8-per-channel", GemmTiles(64, 32, 1)),  # one gemm1 tile spans I: per-row scales in the epilogue
    ("int8-w8a8", GemmTiles(64, 32, 1)),
])
def test_gemm2_input_quantized_in_gemm1_epilogue(scheme, gemm1):
    from moekit.triton_ops.quant_gemm import fuses_output_quant

    inter = 192 if scheme == "fp8-block128" else 64
    case = make_case(scheme, tokens=11, hidden=160, inter=inter, bias=True)  # K = 160: a partial 128 block
    assert fuses_output_quant(case.weights.quant, inter, gemm1.block_n)
    out = triton_out(case, ExpertsTiles(16, gemm1, GemmTiles(32, 64, 1)))
    assert relative_error(out, reference(case).double()) <= 1e-3


@pytest.mark.parametrize("layout,inter,block_n,one_block", [
    (GateUpLayout.CONCATENATED, 256, 64, True),  # up rows from 256: tiles inside 128-row blocks
    (GateUpLayout.CONCATENATED, 192, 64, False),  # up rows from 192: a tile straddles two blocks
    (GateUpLayout.INTERLEAVED, 192, 64, True),  # rows 2c, 2c + 1 of 64 columns: 128 rows
    (GateUpLayout.INTERLEAVED, 256, 128, False),  # 256 rows: two blocks
])
def test_block_scales_one_per_tile_or_per_column(layout, inter, block_n, one_block):
    # fp8-block128 loads one weight scale per K step where a tile's rows lie in one 128-row block,
    # else one per column; both against the reference (K = 320: a partial last block).
    from moekit.triton_ops.quant_gemm import _one_weight_block

    spec = METHODS["fp8-block128"].spec
    assert _one_weight_block(spec, block_n, inter, layout is GateUpLayout.INTERLEAVED) is one_block
    assert _one_weight_block(spec, 128) and not _one_weight_block(spec, 256)  # gemm2's tiles
    case = make_case("fp8-block128", tokens=9, hidden=320, inter=inter, bias=True, layout=layout,
                     activation="swigluoai" if layout is GateUpLayout.INTERLEAVED else "silu")
    tiles = ExpertsTiles(16, GemmTiles(block_n, 128, 1), GemmTiles(256 if one_block else 128, 128, 1))
    assert relative_error(triton_out(case, tiles), reference(case).double()) <= 1e-3


@pytest.mark.parametrize("scheme", ["w4a16-g64", "fp8-per-tensor", "int8-w8a8"])
def test_ungated_relu2(scheme):
    case = make_case(scheme, tokens=10, activation="relu2", bias=True)
    assert relative_error(triton_out(case), reference(case).double()) <= tolerance(scheme)


@pytest.mark.parametrize("scheme", ["mxfp4", "nvfp4", "w4a16-g32-asym", "w8a16-ch"])
def test_fp16_default_tiles_through_apply(scheme):
    # tiles=None: the default heuristic for a quantized key (decode tiles, BLOCK_K past H).
    case = make_case(scheme, tokens=6, dtype=torch.float16, bias=True)
    out = TritonExperts().apply(case.x, case.topk_weights, case.topk_ids, case.weights, case.activation, case.layout)
    assert out.dtype == torch.float16
    assert relative_error(out, reference(case).double()) <= 1e-2  # fp16 weights, activations and rows


@pytest.mark.parametrize("scheme", ["w4a16-g128-asym", "fp8-block128"])
def test_layer_with_triton_backend_matches_reference_layer(scheme):
    layer = moekit.MoE(6, 2, 128, 128, quant=scheme, dtype=torch.float32, device="cpu", backend="triton",
                       expert_bias=True)
    ref = moekit.MoE(6, 2, 128, 128, quant=scheme, dtype=torch.float32, device="cpu", expert_bias=True)
    ref.load_state_dict(layer.state_dict())
    assert layer.explain().backend == "triton" and ref.explain().backend == "reference"
    x = torch.randn(7, 128)
    with torch.no_grad():
        assert relative_error(layer(x), ref(x).double()) <= 1e-3


# -- activation quantization ------------------------------------------------------------------------

@pytest.mark.parametrize("cols", [200, 1280])  # 1280: rows in five chunks (activation_quant.column_chunks)
@pytest.mark.parametrize("one_program", [True, False])
@pytest.mark.parametrize("scheme", W8A8)
def test_activation_quant_matches_quantize_activations(scheme, one_program, cols, monkeypatch):
    if not one_program:  # the atomic maximum (per tensor) over one-row programs; 4-row quantizing
        monkeypatch.setattr(activation_quant, "AMAX_TILE_ELEMENTS", 1)  # programs, the last one partial
        monkeypatch.setattr(activation_quant, "INTERPRETER_TILE_ELEMENTS", 4 * 256)
    assert activation_quant.column_chunks(cols, 0)[1] == (1 if cols == 200 else 5)
    spec = METHODS[scheme].spec
    x = torch.randn(37, cols) * torch.logspace(-3, 1, cols)  # 200: a partial last 128-group; fp8 subnormals
    x[3, 199], x[3, 7], x[3, 8] = 127.0, 2.5, -3.5  # int8 per row: scale 1, two exact ties (-> 2, -4)
    static = torch.tensor(0.004) if spec.act_static else None  # saturates the largest values
    q = quantize_rows(x, spec, static)
    codes, scale = quantize_activations(x, spec, static)
    assert torch.equal(q.codes.view(torch.uint8), codes.view(torch.uint8))  # bit for bit (fp8: -0.0 too)
    assert torch.equal(q.scale.reshape(scale.shape), scale)


@pytest.mark.parametrize("scheme", ["fp8-per-tensor", "fp8-block128", "int8-w8a8"])
def test_activation_quant_skips_padding_rows(scheme):
    # gemm2's input in the expert alignment: padding rows hold garbage that must not reach a
    # per-tensor maximum, and get zero codes.
    spec = METHODS[scheme].spec
    ids = torch.tensor([[0, 2], [2, 1], [0, 2]], dtype=torch.int32)
    aligned = align_pairs_by_expert(ids, 3, 16)
    rows = aligned.sorted_pairs.numel()
    x = torch.randn(rows, 96)
    real = (aligned.sorted_pairs < ids.numel()) & (torch.arange(rows) < aligned.num_rows)
    x[~real] = 1e4
    q = quantize_rows(x, spec, row_map=RowMap(aligned.sorted_pairs, aligned.num_rows, ids.numel()))
    codes, scale = quantize_activations(x[real], spec)
    assert torch.equal(q.codes[real].view(torch.uint8), codes.view(torch.uint8))
    assert torch.equal(q.scale.reshape(-1) if spec.act_group < 0 else q.scale[real], scale.reshape(-1) if
                       spec.act_group < 0 else scale)
    in_use = torch.arange(rows) < aligned.num_rows
    assert (q.codes[in_use & ~real].float() == 0).all()


# -- capabilities and tiles -----------------------------------------------------------------------

def _problem(scheme):
    return MoEProblem(8, 2, 128, 128, torch.bfloat16, "cuda", parse_activation("silu"), quant=scheme)


def _env(capability):
    return Environment(True, "GPU", capability, True, None)


@pytest.mark.parametrize("scheme", sorted(moekit.quant.KNOWN_SCHEMES))
def test_every_scheme_served_on_hopper_and_fp8_refused_on_ampere(scheme):
    assert TritonExperts.supports(_problem(scheme), _env((9, 0))) == (True, "supported")
    ok, reason = TritonExperts.supports(_problem(scheme), _env((8, 0)))
    fp8 = scheme.startswith("fp8")
    assert ok is not fp8
    if fp8:
        assert "fp8 tensor-core dots" in reason and "8.9" in reason and "8.0" in reason


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("tokens", [1, 16, 256, 4096, 16384])
def test_default_quant_tiles_are_sound(scheme, tokens):
    spec = METHODS[scheme].spec
    tiles = default_tiles(TableKey("Some GPU", 128, 8, 2048, 768, torch.bfloat16, True, scheme), tokens)
    for g in (tiles.gemm1, tiles.gemm2):
        assert g.block_k >= 32 and g.block_n >= 16  # fp8 / int8 dots take K steps of 32
        if not spec.weight_only and spec.act_group > 0:
            assert 128 % g.block_k == 0
    if spec.weight_only and tiles.block_m > 4:  # tensor cores: the swapped loop, one scale group per K step
        for g in (tiles.gemm1, tiles.gemm2):
            assert g.swap_ab
            k_step = quant_block_k(spec, g.block_k, swap_ab=True)
            assert k_step >= 16 and (spec.group_k == 0 or k_step <= spec.group_k)


# -- number formats in Triton ---------------------------------------------------------------------

@triton.jit
def _decode(codes_ptr, out_ptr, WHICH: tl.constexpr):
    i = tl.arange(0, 256)
    c = tl.load(codes_ptr + i).to(tl.int32)
    if WHICH == 0:
        v = qf.e4m3_values(c)
    elif WHICH == 1:
        v = qf.e4m3_values(c, qf.E4M3_E2M1_SHIFT)  # 2**117 times the value, from the exponent bits
    elif WHICH == 2:
        v = qf.e8m0_values(c)
    elif WHICH == 3:
        v = qf.e2m1_scaled_down(c & 15) * qf.E2M1_UNBIAS  # through fp32 subnormals: none flushed
    elif WHICH == 4:
        v = qf.uint4_minus(c & 15, 3.0)
    else:
        v = qf.int8_minus(c.to(tl.int8).to(tl.int32), -5.0)
    tl.store(out_ptr + i, v)


def test_format_helpers_match_quant_formats():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    e4m3 = codes.view(torch.float8_e4m3fn).float()
    expected = [e4m3, e4m3 * 2.0**117, formats.e8m0_to_float(codes), formats.e2m1_to_float(codes & 15),
                (codes & 15).float() - 3.0, codes.view(torch.int8).float() + 5.0]
    for which, want in enumerate(expected):
        out = torch.empty(256)
        _decode[(1,)](codes, out, which)
        torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True, msg=f"helper {which}")
