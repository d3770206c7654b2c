"""The Triton experts backend on CUDA at real model shapes and every benchmark token count: against a
float32 reference (per-expert upcast: the fp64 spec does not fit at 16384 tokens), every output
element written, NaN-free; out-of-range ids; CUDA-graph replay and torch.compile of the layer."""

import pytest
import torch

import moekit
from moekit.activations import GateUpLayout, parse_activation
from moekit.triton_ops.experts_kernels import fused_experts
from moekit.triton_ops.tile_configs import TableKey, tiles_for
from moekit.tolerance import relative_error

SHAPES = {
    # name: (E, k, H, I, activation, bias, layout)
    "mixtral-8x7b": (8, 2, 4096, 14336, "silu", False, "concatenated"),
    "qwen3-30b-a3b": (128, 8, 2048, 768, "silu", False, "concatenated"),
    "deepseek-v3": (256, 8, 7168, 2048, "silu", False, "concatenated"),
    "gpt-oss-120b": (128, 4, 2880, 2880, "swigluoai", True, "interleaved"),
}
TOKENS = [1, 8, 64, 256, 1024, 4096, 16384]
_WEIGHTS = {}


def weights(name):
    if name not in _WEIGHTS:
        _WEIGHTS.clear()  # one shape's weights at a time (DeepSeek-V3's are 22.5 GB)
        torch.cuda.empty_cache()
        E, k, H, I, act, bias, layout = SHAPES[name]
        w13 = (torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16) / H**0.5)
        w2 = (torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16) / I**0.5)
        b13 = (0.1 * torch.randn(E, 2 * I, device="cuda")).bfloat16() if bias else None
        b2 = (0.1 * torch.randn(E, H, device="cuda")).bfloat16() if bias else None
        _WEIGHTS[name] = (w13, w2, b13, b2, parse_activation(act), GateUpLayout(layout))
    return _WEIGHTS[name]


def reference_fp32(x, w13, w2, b13, b2, topk_weights, topk_ids, act, layout):
    """Loop over the experts that got tokens, upcasting one expert's weights at a time."""
    from moekit.activations import apply_activation

    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    flat = topk_ids.reshape(-1).long()
    for e in torch.unique(flat).tolist():
        if not 0 <= e < w13.shape[0]:
            continue
        pair = (flat == e).nonzero().flatten()
        tok = pair // topk_ids.shape[1]
        h = x[tok].float() @ w13[e].float().t()
        if b13 is not None:
            h = h + b13[e].float()
        y = apply_activation(h, act, layout) @ w2[e].float().t()
        if b2 is not None:
            y = y + b2[e].float()
        out.index_add_(0, tok, y * topk_weights.reshape(-1)[pair].unsqueeze(1))
    return out


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_real_shapes_match_fp32_reference(name, tokens):
    w13, w2, b13, b2, act, layout = weights(name)
    E, k, H = w13.shape[0], SHAPES[name][1], w13.shape[2]
    x = torch.randn(tokens, H, device="cuda", dtype=torch.bfloat16)
    topk_weights, topk_ids = moekit.route(torch.randn(tokens, E, device="cuda"), k)
    tiles, _ = tiles_for(TableKey(torch.cuda.get_device_name(), E, k, H, w2.shape[2], torch.bfloat16, True), tokens)
    poisoned = torch.full_like(x, float("nan"))
    out = fused_experts(x, w13, w2, topk_weights, topk_ids, act, layout, tiles, b13, b2, out=poisoned)
    assert torch.isfinite(out).all(), "unwritten (NaN-poisoned) or non-finite output elements"
    rel = relative_error(out, reference_fp32(x, w13, w2, b13, b2, topk_weights, topk_ids, act, layout).double())
    assert rel <= 1e-2, rel


@pytest.mark.parametrize("name", list(SHAPES))
def test_tma_weight_tiles_match_fp32_reference(name):
    import dataclasses

    w13, w2, b13, b2, act, layout = weights(name)
    E, k, H = w13.shape[0], SHAPES[name][1], w13.shape[2]
    x = torch.randn(3000, H, device="cuda", dtype=torch.bfloat16)
    topk_weights, topk_ids = moekit.route(torch.randn(3000, E, device="cuda"), k)
    tiles, _ = tiles_for(TableKey(torch.cuda.get_device_name(), E, k, H, w2.shape[2], torch.bfloat16, True), 4096)
    tiles = dataclasses.replace(tiles, block_m=128, gemm1=dataclasses.replace(tiles.gemm1, block_k=64, tma=True),
                                gemm2=dataclasses.replace(tiles.gemm2, block_k=64, tma=True))
    out = fused_experts(x, w13, w2, topk_weights, topk_ids, act, layout, tiles, b13, b2,
                        out=torch.full_like(x, float("nan")))
    assert torch.isfinite(out).all()
    rel = relative_error(out, reference_fp32(x, w13, w2, b13, b2, topk_weights, topk_ids, act, layout).double())
    assert rel <= 1e-2, rel


def test_out_of_range_ids_contribute_nothing_on_gpu():
    w13, w2, b13, b2, act, layout = weights("qwen3-30b-a3b")
    x = torch.randn(300, 2048, device="cuda", dtype=torch.bfloat16)
    topk_weights, topk_ids = moekit.route(torch.randn(300, 128, device="cuda"), 8)
    bad = torch.rand(topk_ids.shape, device="cuda") < 0.25
    ids = torch.where(bad, torch.randint(128, 10**6, topk_ids.shape, device="cuda", dtype=torch.int32), topk_ids)
    ids = torch.where(bad & (torch.rand(ids.shape, device="cuda") < 0.5), -1, ids)
    moekit.set_host_checks(False)
    try:
        out = moekit.fused_moe(x, w13, w2, topk_weights, ids)
    finally:
        moekit.set_host_checks(None)
    ref = reference_fp32(x, w13, w2, None, None, topk_weights.masked_fill(bad, 0.0), topk_ids, act, layout)
    assert relative_error(out, ref.double()) <= 1e-2
    with pytest.raises(ValueError, match="topk_ids"):  # eager, checks on: refused with a message
        moekit.fused_moe(x, w13, w2, topk_weights, ids)


def _layer():
    torch.manual_seed(0)
    return moekit.MoE(128, 8, 2048, 768, dtype=torch.bfloat16, device="cuda", shared_intermediate_size=768,
                      routing=moekit.RoutingConfig("softmax"))


@pytest.mark.parametrize("tokens", [1, 64, 1024])
def test_layer_cuda_graph_replay_matches_eager(tokens):
    layer = _layer()
    assert layer.explain().backend == "triton", str(layer.explain())
    x = torch.randn(tokens, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        eager = layer(x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)  # warm up (compiles) outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = layer(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(captured, layer(x), rtol=0, atol=0)
    assert eager.shape == captured.shape


def test_fused_moe_cuda_graph_replay_matches_eager():
    w13, w2, *_ = weights("qwen3-30b-a3b")
    x = torch.randn(37, 2048, device="cuda", dtype=torch.bfloat16)
    tw, ti = moekit.route(torch.randn(37, 128, device="cuda"), 8)
    eager = moekit.fused_moe(x, w13, w2, tw, ti)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = moekit.fused_moe(x, w13, w2, tw, ti)
    graph.replay()
    torch.testing.assert_close(captured, eager, rtol=0, atol=0)


def test_torch_compile_fullgraph_matches_and_has_no_breaks():
    layer = _layer()
    x = torch.randn(50, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        explanation = torch._dynamo.explain(layer)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(layer, fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x), rtol=2e-2, atol=2e-2)
