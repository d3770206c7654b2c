"""The Triton experts backend against the float64 spec, in Triton's CPU interpreter (fp32/fp16:
bf16 dots are wrong under the interpreter; docs/facts.md)."""

import pytest
import torch

import moekit
from moekit.activations import GateUpLayout, parse_activation
from moekit.experts import TritonExperts
from moekit.triton_ops.experts_kernels import fused_experts
from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles
from moe_inputs import interleave_gate_up, make_inputs, run_fused, spec_of
from tolerance import assert_close_to_reference

GRID = [
    # tokens, experts, top_k, hidden, inter
    (1, 1, 1, 8, 8),  # one token, one expert
    (0, 4, 2, 24, 20),  # no tokens: nothing launched
    (7, 5, 5, 13, 11),  # top_k == E, prime sizes: every tile is partial
    (33, 64, 8, 40, 36),  # many experts with one or two rows each
    (100, 7, 2, 72, 50),  # E not a power of two; 100 tokens: rows not a multiple of the tile
    (3, 128, 8, 17, 9),  # most experts empty
]
SMALL = ExpertsTiles(16, GemmTiles(16, 16, 2), GemmTiles(16, 32, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", GRID)
def test_grid_through_fused_moe(shape, dtype):
    inp = make_inputs(*shape, dtype=dtype)
    assert_close_to_reference(run_fused(inp, backend="triton"), spec_of(inp), dtype)


@pytest.mark.parametrize("activation", ["silu", "gelu", "swigluoai", "relu2"])
@pytest.mark.parametrize("bias", [False, True])
def test_activations_and_biases(activation, bias):
    inp = make_inputs(45, 6, 2, 30, 22, gated=activation != "relu2", bias=bias)
    out = run_fused(inp, activation, backend="triton")
    assert_close_to_reference(out, spec_of(inp, activation), torch.float32)


def test_tma_tiles_across_layouts_and_activations():
    # Descriptor rows run past an expert's gate (or last) rows at the edge tile: masked at the store.
    inp = make_inputs(29, 5, 2, 24, 20, bias=True)
    tiles = ExpertsTiles(16, GemmTiles(16, 16, 1, tma=True), GemmTiles(16, 16, 1, tma=True))
    for act in ("silu", "swigluoai"):
        out = fused_experts(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, parse_activation(act),
                            GateUpLayout.CONCATENATED, tiles, inp.w13_bias, inp.w2_bias)
        assert_close_to_reference(out, spec_of(inp, act), torch.float32)
    relu = make_inputs(29, 5, 2, 24, 20, gated=False)
    out = fused_experts(relu.x, relu.w13, relu.w2, relu.topk_weights, relu.topk_ids, parse_activation("relu2"),
                        GateUpLayout.CONCATENATED, tiles)
    assert_close_to_reference(out, spec_of(relu, "relu2"), torch.float32)


def test_interleaved_gate_up():
    inp = make_inputs(20, 4, 2, 16, 10, bias=True)
    w13_il, b13_il = interleave_gate_up(inp)
    out = moekit.fused_moe(inp.x, w13_il, inp.w2, inp.topk_weights, inp.topk_ids, "swigluoai", b13_il,
                           inp.w2_bias, gate_up_layout="interleaved", backend="triton")
    assert_close_to_reference(out, spec_of(inp, "swigluoai"), torch.float32)


@pytest.mark.parametrize("tiles", [
    ExpertsTiles(16, GemmTiles(16, 16, 1), GemmTiles(16, 16, 1)),  # K a multiple of the tile (no K mask)
    ExpertsTiles(32, GemmTiles(32, 64, 4), GemmTiles(64, 16, 3)),  # K smaller than one tile
    ExpertsTiles(64, GemmTiles(16, 32, 8, num_warps=8), GemmTiles(32, 32, 8)),  # most rows of a block padding
    ExpertsTiles(16, GemmTiles(16, 32, 2, tma=True), GemmTiles(32, 32, 1, tma=True)),  # weights by descriptor
    ExpertsTiles(32, GemmTiles(32, 64, 1, tma=True), GemmTiles(16, 16, 1, tma=True)),  # TMA, K below one tile
], ids=["even-k", "k-below-tile", "block-m-64", "tma", "tma-k-below-tile"])
def test_tile_shapes(tiles):
    inp = make_inputs(70, 9, 3, 48, 32, bias=True)
    out = fused_experts(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, parse_activation("silu"),
                        GateUpLayout.CONCATENATED, tiles, inp.w13_bias, inp.w2_bias)
    assert_close_to_reference(out, spec_of(inp), torch.float32)


def test_non_contiguous_input():
    inp = make_inputs(21, 6, 2, 24, 16)
    x_t = inp.x.t().contiguous().t()  # same values, column-major
    out = moekit.fused_moe(x_t, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, backend="triton")
    assert_close_to_reference(out, spec_of(inp), torch.float32)


@pytest.mark.parametrize("top_k", [1, 3])
def test_out_of_range_ids_contribute_nothing(top_k):
    inp = make_inputs(40, 6, top_k, 24, 16)
    bad = torch.rand(inp.topk_ids.shape) < 0.3
    bad_values = torch.tensor([-1, 6, 7, 10**6], dtype=torch.int32)[torch.randint(0, 4, inp.topk_ids.shape)]
    ids = torch.where(bad, bad_values, inp.topk_ids).to(torch.int64 if top_k == 3 else torch.int32)  # HF: int64
    poisoned = torch.full_like(inp.x, float("nan"))
    out = fused_experts(inp.x, inp.w13, inp.w2, inp.topk_weights, ids, parse_activation("silu"),
                        GateUpLayout.CONCATENATED, SMALL, out=poisoned)
    # The spec of the same batch with the bad pairs' weights zeroed (and any valid id in their place).
    ref = moekit.fused_moe_spec(inp.x, inp.w13, inp.w2, inp.topk_weights.masked_fill(bad, 0.0),
                                torch.where(bad, 0, ids))
    assert bad.any() and out.data_ptr() == poisoned.data_ptr()
    assert_close_to_reference(out, ref, torch.float32)


def test_every_output_element_written():
    inp = make_inputs(37, 8, 2, 40, 24)
    poisoned = torch.full_like(inp.x, float("nan"))
    out = fused_experts(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, parse_activation("silu"),
                        GateUpLayout.CONCATENATED, SMALL, out=poisoned)
    assert out.data_ptr() == poisoned.data_ptr()
    assert_close_to_reference(out, spec_of(inp), torch.float32)


def test_apply_matches_fused_moe_default_tiles():
    inp = make_inputs(12, 8, 2, 32, 16, dtype=torch.float16)
    act = parse_activation("silu")
    out = TritonExperts().apply(inp.x, inp.topk_weights, inp.topk_ids, moekit.ExpertWeights(inp.w13, inp.w2), act,
                                GateUpLayout.CONCATENATED)
    assert_close_to_reference(out, spec_of(inp), torch.float16)


def test_layer_with_triton_backend_on_cpu():
    layer = moekit.MoE(8, 2, 32, 16, dtype=torch.float32, device="cpu", shared_intermediate_size=16,
                       backend="triton")
    assert layer.explain().backend == "triton"
    ref_layer = moekit.MoE(8, 2, 32, 16, dtype=torch.float32, device="cpu", shared_intermediate_size=16)
    ref_layer.load_state_dict(layer.state_dict())
    assert ref_layer.explain().backend == "reference"  # on the CPU the interpreter is never the default
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref_layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_k,block_m", [(1, 16), (4, 16), (5, 32)])
def test_one_token_runs_without_alignment(monkeypatch, top_k, block_m):
    # One token: block m holds pair m, no alignment launch; out-of-range ids still contribute nothing.
    import moekit.triton_ops.experts_kernels as ek

    def no_alignment(*args, **kwargs):
        raise AssertionError("a single token must not launch the alignment")

    monkeypatch.setattr(ek, "align_pairs_by_expert", no_alignment)
    tiles = ExpertsTiles(block_m, GemmTiles(16, 16, 1), GemmTiles(16, 32, 1))
    for act, bias, bad_slot in [("silu", False, None), ("swigluoai", True, 0), ("gelu", True, top_k - 1)]:
        inp = make_inputs(1, 9, top_k, 40, 24, bias=bias)
        ids, weights = inp.topk_ids.clone(), inp.topk_weights.clone()
        if bad_slot is not None:  # an out-of-range id: its pair contributes nothing
            ids[0, bad_slot] = 9 if bad_slot else -1
            weights[0, bad_slot] = 0.0
        poisoned = torch.full_like(inp.x, float("nan"))
        out = fused_experts(inp.x, inp.w13, inp.w2, inp.topk_weights, ids, parse_activation(act),
                            GateUpLayout.CONCATENATED, tiles, inp.w13_bias, inp.w2_bias, out=poisoned)
        ref = moekit.fused_moe_spec(inp.x, inp.w13, inp.w2, weights, ids.clamp(0, 8), act, inp.w13_bias,
                                    inp.w2_bias)
        assert out.data_ptr() == poisoned.data_ptr()
        assert_close_to_reference(out, ref, torch.float32)
