"""quant/scale_layout.py: one-byte scales kept with rows on 32-bit word boundaries, and the layer
keeping them so through loading and moves."""

import pytest
import torch

import moekit
from moekit.quant.scale_layout import kernel_scales, word_padded, words_fit
from moekit.quant.spec import QuantizedMatrix


@pytest.mark.parametrize("groups", [3, 5, 90])
def test_word_padded_rows_keep_the_values_on_word_boundaries(groups):
    scale = torch.randint(0, 256, (2, 7, groups), dtype=torch.uint8)
    assert not words_fit(scale)  # rows of an odd number of bytes
    padded = word_padded(scale)
    assert torch.equal(padded, scale) and padded.stride(1) % 4 == 0 and words_fit(padded)
    base = padded.as_strided((2, 7, padded.stride(1)), padded.stride())
    assert (base[..., groups:] == 0).all()  # the padding reads as zeros
    assert word_padded(padded) is padded  # laid out once


def test_word_padded_leaves_whole_words_and_wider_scales_alone():
    whole = torch.randint(0, 256, (2, 7, 8), dtype=torch.uint8)
    wide = torch.rand(2, 7, 3)
    assert word_padded(whole) is whole and words_fit(whole)
    assert word_padded(wide) is wide and not words_fit(wide)


def test_a_view_whose_last_word_leaves_the_storage_does_not_fit():
    tight = torch.zeros(2 * 7 * 8 - 3, dtype=torch.uint8).as_strided((2, 7, 5), (56, 8, 1))  # 3 bytes short
    assert not words_fit(tight)
    assert words_fit(torch.zeros(2 * 7 * 8, dtype=torch.uint8).as_strided((2, 7, 5), (56, 8, 1)))


def test_kernel_scales_keep_padded_rows_and_give_e4m3_as_bytes():
    padded = word_padded(torch.randint(0, 256, (2, 7, 5), dtype=torch.uint8))
    m = QuantizedMatrix(torch.zeros(2, 7, 80, dtype=torch.uint8), padded)
    assert kernel_scales(m).data_ptr() == padded.data_ptr()  # not copied on every call
    e4m3 = QuantizedMatrix(m.data, torch.rand(2, 7, 5).to(torch.float8_e4m3fn))
    assert kernel_scales(e4m3).dtype == torch.uint8
    with_zero = QuantizedMatrix(m.data, padded, zero=torch.zeros(2, 7, 5, dtype=torch.uint8))
    assert kernel_scales(with_zero).is_contiguous()  # zero points share the scales' strides


def test_the_layer_keeps_its_one_byte_scales_word_aligned():
    # 96 and 160 columns: 3 and 5 groups of 32 (gpt-oss: 90); after loading and a move too
    layer = moekit.MoE(4, 2, 96, 160, quant="mxfp4", dtype=torch.float32, device="cpu")
    assert words_fit(layer.w13_scale) and words_fit(layer.w2_scale)
    state = layer.state_dict()
    assert state["w13_scale"].is_contiguous() and torch.equal(state["w13_scale"], layer.w13_scale)  # plain tensors
    other = moekit.MoE(4, 2, 96, 160, quant="mxfp4", dtype=torch.float32, device="cpu")
    other.load_state_dict(state)
    other.to(torch.float32)  # .to() copies a strided view contiguous: the layer lays it out again
    assert words_fit(other.w13_scale) and words_fit(other.w2_scale)
    x = torch.randn(5, 96)
    with torch.no_grad():
        assert torch.equal(other(x), layer(x))
    unaligned = moekit.MoE(4, 2, 96, 160, quant="w4a16-g32", dtype=torch.float32, device="cpu")
    assert unaligned.w13_scale.is_contiguous()  # fp32 scales: nothing to lay out
