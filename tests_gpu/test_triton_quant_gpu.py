"""The Triton experts kernels on quantized weights, on CUDA at real model shapes (bf16 activations):
every scheme against the reference backend on the same quantized weights (rel <= 1e-2), every
output element written, NaN-free; CUDA-graph replay of a quantized layer; and no dequantized copy
of 4-bit weights in memory.

One test per (shape, scheme) runs every token count on one set of weights (quantizing DeepSeek-V3's
experts takes seconds). Schemes whose group does not divide a shape's dimensions are skipped
(gpt-oss: 2880 = 22.5 x 128)."""

import pytest
import torch

import moekit
from moekit.activations import GateUpLayout, parse_activation
from moekit.experts import ExpertWeights, ReferenceExperts, TritonExperts
from moekit.oracle.quantized import convert_weights
from moekit.quant import METHODS, QuantizedMatrix
from moekit.quant.scale_layout import word_padded
from moekit.tolerance import relative_error

SHAPES = {
    # name: (E, k, H, I, activation, bias, layout, token counts)
    "qwen3-30b-a3b": (128, 8, 2048, 768, "silu", False, "concatenated", (1, 8, 256, 4096)),
    "gpt-oss-120b": (128, 4, 2880, 2880, "swigluoai", True, "interleaved", (1, 8, 256, 4096)),
    "deepseek-v3": (256, 8, 7168, 2048, "silu", False, "concatenated", (1, 256, 4096)),  # 8 tokens: decode tiles as 1
}
SCHEMES = sorted(METHODS)


def quantize_by_expert(method, e: int, n: int, k: int, gain: float = 1.0) -> QuantizedMatrix:
    """Random [E, N, K] weights quantized one expert at a time (DeepSeek's fp32 w13 would be 30 GB),
    one-byte scales laid out as the layer keeps them (gpt-oss mxfp4: rows padded to whole words)."""
    parts = [method.quantize(torch.randn(1, n, k, device="cuda") * (gain / k**0.5)) for _ in range(e)]
    cat = lambda name: None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return QuantizedMatrix(cat("data"), word_padded(cat("scale")), cat("zero"), cat("g_idx"), cat("global_scale"))


def make_weights(name: str, scheme: str) -> ExpertWeights:
    E, k, H, I, act, bias, layout, _ = SHAPES[name]
    method = METHODS[scheme]
    try:
        method.check_divisible("w13", 2 * I, H)
        method.check_divisible("w2", H, I)
    except ValueError as err:
        pytest.skip(str(err))
    static = method.spec.act_static
    # in the Triton backend's format, as a layer keeps them (4-bit codes in MMA order: quant/code_order.py);
    # the reference reads that format too
    return convert_weights(TritonExperts, own_codes=True, weights=ExpertWeights(
        quantize_by_expert(method, E, 2 * I, H), quantize_by_expert(method, E, H, I),
        (0.1 * torch.randn(E, 2 * I, device="cuda")).bfloat16() if bias else None,
        (0.1 * torch.randn(E, H, device="cuda")).bfloat16() if bias else None,
        quant=method.spec,
        a13_scale=torch.tensor(6.0 / 448, device="cuda") if static else None,  # checkpoint-like static scales
        a2_scale=torch.tensor(2.0 / 448, device="cuda") if static else None,
    ))


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_real_shapes_match_reference_on_same_quantized_weights(name, scheme):
    torch.cuda.empty_cache()
    E, k, H, I, act, bias, layout, token_counts = SHAPES[name]
    weights = make_weights(name, scheme)
    activation, layout = parse_activation(act), GateUpLayout(layout)
    failures = []
    for tokens in token_counts:
        x = torch.randn(tokens, H, device="cuda", dtype=torch.bfloat16)
        topk_weights, topk_ids = moekit.route(torch.randn(tokens, E, device="cuda"), k)
        out = TritonExperts().apply(x, topk_weights, topk_ids, weights, activation, layout)
        if not torch.isfinite(out).all():
            failures.append(f"{tokens} tokens: non-finite output")
            continue
        ref = ReferenceExperts().apply(x, topk_weights, topk_ids, weights, activation, layout)
        rel = relative_error(out, ref.double())
        if not rel <= 1e-2:
            failures.append(f"{tokens} tokens: rel {rel:.3g}")
    assert not failures, f"{name} {scheme}: " + "; ".join(failures)


@pytest.mark.parametrize("name", list(SHAPES))
def test_nvfp4_in_mma_order_matches_reference(name, monkeypatch):
    # The opt-in nvfp4 MMA order (runs of two 16-code groups, quant/code_order.py) on the GPU: the
    # swapped loop's per-byte group scales and the GEMV's split words at every token count.
    from moekit.quant.code_order import NVFP4_MMA_ORDER_FLAG

    monkeypatch.setenv(NVFP4_MMA_ORDER_FLAG, "1")
    weights = make_weights(name, "nvfp4")
    assert weights.w13.mma_order and weights.w2.mma_order
    test_real_shapes_match_reference_on_same_quantized_weights(name, "nvfp4")


@pytest.mark.parametrize("gain, folds", [(1.0, True), (2.0**12, False)])
def test_mxfp4_with_and_without_the_folded_scale(gain, folds):
    # e8m0 scales above 2 (bytes 129+) would overflow the PTX that folds e2m1's 2**126 into them: such
    # weights are marked at conversion and dequantized with two multiplies; both paths match.
    E, k, H, I = 128, 8, 2048, 768
    method = METHODS["mxfp4"]
    weights = convert_weights(TritonExperts, own_codes=True, weights=ExpertWeights(
        quantize_by_expert(method, E, 2 * I, H, gain), quantize_by_expert(method, E, H, I, gain),
        quant=method.spec))
    assert weights.w13.scales_at_most_two == folds and weights.w2.scales_at_most_two == folds
    assert (int(weights.w13.scale.max()) > 128) != folds
    for tokens in (256, 4096):
        x = torch.randn(tokens, H, device="cuda", dtype=torch.bfloat16)
        topk_weights, topk_ids = moekit.route(torch.randn(tokens, E, device="cuda"), k)
        args = (x, topk_weights, topk_ids, weights, parse_activation("silu"), GateUpLayout.CONCATENATED)
        out = TritonExperts().apply(*args)
        assert torch.isfinite(out).all()
        assert relative_error(out, ReferenceExperts().apply(*args).double()) <= 1e-2


@pytest.mark.parametrize("scheme", ["w4a16-g128", "mxfp4", "fp8-block128", "fp8-per-tensor", "int8-w8a8"])
def test_every_output_element_written(scheme):
    from moekit.triton_ops.experts_kernels import fused_experts
    from moekit.triton_ops.tile_configs import tiles_for_call

    weights = make_weights("qwen3-30b-a3b", scheme)
    x = torch.randn(300, 2048, device="cuda", dtype=torch.bfloat16)
    topk_weights, topk_ids = moekit.route(torch.randn(300, 128, device="cuda"), 8)
    tiles = tiles_for_call(x.device, (128, 2048, 768), topk_ids.shape, x.dtype, True, scheme)
    poisoned = torch.full_like(x, float("nan"))
    out = fused_experts(x, weights.w13, weights.w2, topk_weights, topk_ids, parse_activation("silu"),
                        GateUpLayout.CONCATENATED, tiles, out=poisoned, quant=weights.quant)
    assert out.data_ptr() == poisoned.data_ptr() and torch.isfinite(out).all()


def _layer(scheme):
    torch.manual_seed(0)
    return moekit.MoE(128, 8, 2048, 768, quant=scheme, dtype=torch.bfloat16, device="cuda",
                      routing=moekit.RoutingConfig("softmax"))


@pytest.mark.parametrize("tokens", [1, 512])
@pytest.mark.parametrize("scheme", ["mxfp4", "w4a16-g128-asym", "fp8-block128", "fp8-per-tensor", "int8-w8a8"])
def test_quantized_layer_cuda_graph_replay_matches_eager(scheme, tokens):
    layer = _layer(scheme)
    assert layer.explain().backend == "triton", str(layer.explain())
    x = torch.randn(tokens, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
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
        assert torch.isfinite(captured).all()


@pytest.mark.parametrize("scheme", ["mxfp4", "w4a16-g128", "nvfp4"])
def test_4bit_weights_never_dequantized_in_memory(scheme):
    layer = _layer(scheme)
    dequantized_bytes = 128 * 3 * 2048 * 768 * 2  # w13 + w2 in bf16: 1.2 GB (w2 alone 0.4 GB)
    x = torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)  # compile first
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        layer(x)
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    # The forward's own buffers (aligned rows, activated rows, pair rows) are a few MiB here.
    assert peak < dequantized_bytes / 10, f"forward allocated {peak / 2**20:.1f} MiB at its peak"


@pytest.mark.parametrize("scheme", ["fp8-block128", "fp8-per-channel", "fp8-per-tensor", "int8-w8a8"])
def test_reference_activation_quantization_same_on_cuda_as_on_cpu(scheme):
    # bf16 activations often sit exactly between two fp8 codes once divided by their scale: a scale
    # one ulp off (CUDA divides by a Python number through its reciprocal) moved ~0.1% of the codes
    # and put the GPU reference 1.2-1.4e-2 away from the kernel for fp8-block128.
    from moekit.quant.dequant import quantize_activations

    spec = METHODS[scheme].spec
    x = torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16).float()
    codes, scale = quantize_activations(x, spec)
    codes_cpu, scale_cpu = quantize_activations(x.cpu(), spec)
    assert torch.equal(scale.cpu(), scale_cpu)
    assert torch.equal(codes.cpu().view(torch.uint8), codes_cpu.view(torch.uint8))


@pytest.mark.parametrize("k", [768, 2880, 7168])
@pytest.mark.parametrize("scheme", ["fp8-block128", "fp8-per-channel", "fp8-per-tensor", "int8-w8a8"])
def test_activation_quant_kernel_bit_exact_on_cuda(scheme, k):
    # The kernel rounds with the GPU's own conversions (fp32 -> e4m3, rint), the CPU reference on
    # the e4m3 / integer grid by hand: the same codes, ties (exact halves after the division) included.
    from moekit.quant.dequant import quantize_activations
    from moekit.triton_ops.activation_quant import quantize_rows

    spec = METHODS[scheme].spec
    x = torch.randn(1000, k, device="cuda", dtype=torch.bfloat16).float() * torch.logspace(-3, 1, k, device="cuda")
    x[5, :4] = torch.tensor([127.0, 2.5, -3.5, 0.0], device="cuda")
    q = quantize_rows(x, spec)
    codes, scale = quantize_activations(x.cpu(), spec)
    assert torch.equal(q.scale.cpu().reshape(scale.shape), scale)
    assert torch.equal(q.codes.cpu().view(torch.uint8), codes.view(torch.uint8))
