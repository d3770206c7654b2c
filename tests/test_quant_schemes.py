"""Every quant scheme: on-the-fly quantization gives a valid matrix in moekit's layout whose
dequantization is close to the float weights (by the format's precision), scales follow their
blocks, and the reference dequantization agrees with an independent element-wise reading."""

import pytest
import torch

from moekit.quant import METHODS, formats, method_for, parse_quant
from moekit.quant.dequant import dequantize, fake_quantize_activations, quantize_activations
from moekit.quant.spec import ACT_PER_TENSOR, ActQuant, QuantizedMatrix, WeightFormat

# Relative Frobenius error of quantize -> dequantize on Gaussian weights, by the format's precision.
ROUND_TRIP_TOL = {WeightFormat.FP8: 0.04, WeightFormat.INT8: 0.012, WeightFormat.UINT4: 0.16, WeightFormat.E2M1: 0.13}

E, N, K = 3, 256, 256


@pytest.mark.parametrize("scheme", sorted(METHODS))
def test_quantize_dequantize_round_trip(scheme):
    method = method_for(scheme)
    w = torch.randn(E, N, K)
    q = method.quantize(w)
    method.check("w", q, E, N, K)
    rel = ((dequantize(q, method.spec) - w).norm() / w.norm()).item()
    assert rel <= ROUND_TRIP_TOL[method.spec.weight], rel
    assert 0 < rel  # quantization really happened


@pytest.mark.parametrize("scheme", sorted(METHODS))
def test_dequantize_matches_elementwise_definition(scheme):
    """(code - zero) * scale[n // gn, k // gk] * global, read one element at a time."""
    spec = method_for(scheme).spec
    n, k = 128, 128
    q = method_for(scheme).quantize(torch.randn(2, n, k))
    dense = dequantize(q, spec)
    gn, gk = spec.group_n or n, spec.group_k or k
    codes = formats.unpack_nibbles(q.data) if spec.weight.packed else q.data
    for _ in range(50):
        e, row, col = (torch.randint(0, d, ()).item() for d in (2, n, k))
        c = codes[e, row, col]
        value = formats.e2m1_to_float(c).item() if spec.weight is WeightFormat.E2M1 else c.float().item()
        if q.zero is not None:
            value -= q.zero[e, row // gn, col // gk].float().item()
        elif spec.weight is WeightFormat.UINT4:
            value -= 8
        s = q.scale[e, row // gn, col // gk]
        value *= formats.e8m0_to_float(s).item() if s.dtype == torch.uint8 else s.float().item()
        if q.global_scale is not None:
            value *= q.global_scale[e].item()
        assert dense[e, row, col].item() == pytest.approx(value, rel=1e-6, abs=1e-12)


def test_act_order_g_idx_picks_each_columns_group():
    spec = method_for("w4a16-g32").spec
    q = method_for("w4a16-g32").quantize(torch.randn(1, 64, 128))
    g_idx = torch.randperm(128).remainder(4).to(torch.int32)[None]  # groups of 32 columns, shuffled
    with_g = dequantize(QuantizedMatrix(q.data, q.scale, g_idx=g_idx), spec)
    codes = formats.unpack_nibbles(q.data).float() - 8
    expected = codes * q.scale[:, :, g_idx[0].long()]
    assert torch.equal(with_g, expected)


def test_block_scales_follow_128_blocks():
    w = torch.randn(1, 256, 256)
    w[0, :128, 128:] *= 100  # one block far larger than the rest
    q = method_for("fp8-block128").quantize(w)
    assert q.scale.shape == (1, 2, 2)
    assert q.scale[0, 0, 1] > 50 * q.scale[0, 0, 0]


def test_nvfp4_global_scale_uses_e4m3_range():
    q = method_for("nvfp4").quantize(torch.randn(2, 64, 64))
    assert q.scale.dtype == torch.float8_e4m3fn and q.global_scale.shape == (2,)
    assert torch.allclose(q.scale.float().amax(dim=(1, 2)), torch.full((2,), formats.FP8_MAX))


@pytest.mark.parametrize("scheme", ["w4a16-g64-asym", "w8a16-ch-asym"])
def test_asymmetric_schemes_fit_shifted_weights(scheme):
    w = torch.rand(2, 64, 128) + 0.5  # all positive: zero points pay off
    sym = method_for(scheme.removesuffix("-asym")).quantize(w)
    asym = method_for(scheme).quantize(w)
    err = lambda q, m: (dequantize(q, method_for(m).spec) - w).norm()  # noqa: E731
    assert err(asym, scheme) < 0.75 * err(sym, scheme.removesuffix("-asym"))


def test_check_names_the_tensor_and_expected_value():
    method = method_for("w4a16-g128")
    q = method.quantize(torch.randn(2, 64, 256))
    with pytest.raises(ValueError, match=r"w2.data must have shape \(2, 64, 128\), got \(2, 64, 64\)"):
        method.check("w2", QuantizedMatrix(q.data[..., :64], q.scale), 2, 64, 256)
    with pytest.raises(TypeError, match="w2.scale must have dtype torch.float32, got torch.float16"):
        method.check("w2", QuantizedMatrix(q.data, q.scale.half()), 2, 64, 256)
    with pytest.raises(ValueError, match="w2: group size 128 of scheme 'w4a16-g128' does not divide its input dimension 192"):
        method.check("w2", q, 2, 64, 192)
    with pytest.raises(ValueError, match="needs zero points"):
        method_for("w4a16-g128-asym").check("w2", q, 2, 64, 256)


def test_scheme_names_and_aliases():
    assert parse_quant(None) == "none"
    assert parse_quant("W4A16") == "w4a16-g128"
    assert parse_quant("w8a16") == "w8a16-ch"
    assert parse_quant("fp8") == "fp8-per-tensor"
    with pytest.raises(ValueError, match="unknown quant scheme 'int3'"):
        parse_quant("int3")
    with pytest.raises(TypeError):
        parse_quant(8)


@pytest.mark.parametrize("scheme", ["fp8-per-tensor", "fp8-per-channel", "fp8-block128", "int8-w8a8"])
def test_activation_quantization_granularity(scheme):
    spec = method_for(scheme).spec
    x = torch.randn(6, 256) * torch.logspace(-2, 2, 6)[:, None]  # rows of very different size
    codes, scale = quantize_activations(x, spec)
    qmax = formats.FP8_MAX if spec.act is ActQuant.FP8 else formats.INT8_MAX
    expected_cols = 1 if spec.act_group <= 0 else 256 // spec.act_group
    expected_rows = 1 if spec.act_group == ACT_PER_TENSOR else 6
    assert scale.shape == (expected_rows, expected_cols)
    assert codes.float().abs().max().item() == pytest.approx(qmax)  # the largest group hits the top code
    rel = ((fake_quantize_activations(x, spec) - x).norm() / x.norm()).item()
    assert 0 < rel < 0.05


def test_static_activation_scale_saturates():
    spec = method_for("fp8-per-tensor-static").spec
    x = torch.tensor([[1.0, -2.0, 1000.0]])
    codes, scale = quantize_activations(x, spec, static_scale=torch.tensor(0.5))
    assert scale.item() == 0.5 and codes.float().tolist() == [[2.0, -4.0, formats.FP8_MAX]]
