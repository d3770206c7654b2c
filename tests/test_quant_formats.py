"""The number formats (moekit/quant/formats.py) against the formats' own definitions: the e2m1 value
table from its bit fields, e8m0 as a biased power of two, e4m3's range, nibble order of moekit's
4-bit packing, and round-to-nearest-even where it matters."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moekit.quant import formats


def e2m1_from_bits(code: int) -> float:
    """OCP MX spec: sign | 2 exponent bits (bias 1) | 1 mantissa bit; exponent 0 is subnormal."""
    sign = -1.0 if code & 0b1000 else 1.0
    exp, mant = (code >> 1) & 0b11, code & 1
    if exp == 0:
        return sign * mant * 0.5
    return sign * (1 + mant / 2) * 2.0 ** (exp - 1)


def test_e2m1_table_matches_bit_fields():
    codes = torch.arange(16, dtype=torch.uint8)
    values = formats.e2m1_to_float(codes)
    for c in range(16):
        assert values[c].item() == e2m1_from_bits(c)
        assert math.copysign(1, values[c].item()) == math.copysign(1, e2m1_from_bits(c))  # -0.0 kept


def test_float_to_e2m1_round_trips_every_code():
    codes = torch.arange(16, dtype=torch.uint8)
    assert torch.equal(formats.float_to_e2m1(formats.e2m1_to_float(codes)), codes)


@pytest.mark.parametrize("x, expected", [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0),
                                         (3.5, 4.0), (5.0, 4.0), (7.0, 6.0), (100.0, 6.0), (-0.75, -1.0)])
def test_float_to_e2m1_ties_to_even_and_saturates(x, expected):
    code = formats.float_to_e2m1(torch.tensor([x]))
    assert formats.e2m1_to_float(code).item() == expected


@given(st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=64))
def test_float_to_e2m1_is_nearest(xs):
    x = torch.tensor(xs, dtype=torch.float32)
    got = formats.e2m1_to_float(formats.float_to_e2m1(x))
    table = torch.tensor(formats.E2M1_VALUES)
    best = (x.clamp(-6, 6)[:, None] - table[None, :]).abs().min(dim=1).values
    assert torch.allclose((x.clamp(-6, 6) - got).abs(), best)


def test_e8m0_is_a_biased_power_of_two_and_255_is_nan():
    codes = torch.tensor([0, 1, 126, 127, 128, 254, 255], dtype=torch.uint8)
    values = formats.e8m0_to_float(codes)
    assert values[:-1].tolist() == [2.0**-127, 2.0**-126, 0.5, 1.0, 2.0, 2.0**127]
    assert math.isnan(values[-1].item())
    with pytest.raises(TypeError, match="e8m0 scales must be uint8"):
        formats.e8m0_to_float(codes.int())


def test_mx_scale_puts_block_max_in_e2m1_top_binade():
    amax = torch.tensor([6.0, 4.0, 1.0, 0.3, 448.0])
    scale = formats.e8m0_to_float(formats.mx_scale_for(amax))
    # floor(log2(amax)) - 2: amax / scale lies in [4, 8), the top binade of e2m1 (saturating past 6)
    ratio = amax / scale
    assert ((ratio >= 4) & (ratio < 8)).all(), ratio


def test_nibble_order_even_column_low():
    codes = torch.tensor([[1, 2, 3, 4, 15, 0]], dtype=torch.uint8)
    packed = formats.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x43, 0x0F]]
    assert torch.equal(formats.unpack_nibbles(packed), codes)


@given(st.integers(1, 6), st.integers(1, 8))
def test_pack_unpack_round_trip(rows, half_cols):
    codes = torch.randint(0, 16, (rows, 2 * half_cols), dtype=torch.uint8)
    assert torch.equal(formats.unpack_nibbles(formats.pack_nibbles(codes)), codes)


def test_pack_rejects_odd_width_and_out_of_range_codes():
    with pytest.raises(ValueError, match="even last dimension"):
        formats.pack_nibbles(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0..15"):
        formats.pack_nibbles(torch.tensor([16, 0]))


def test_fp8_cast_saturates_instead_of_nan():
    x = torch.tensor([1000.0, -1000.0, 448.0, 0.1])
    y = formats.to_fp8(x).float()
    assert y[:3].tolist() == [448.0, -448.0, 448.0]
    assert torch.isfinite(y).all()
    assert formats.FP8_MAX == torch.finfo(torch.float8_e4m3fn).max


def test_int_ranges():
    assert formats.int_range(4, signed=False) == (0, 15)
    assert formats.int_range(8, signed=True) == (-128, 127)


def test_divide_rounds_once_like_float64_division():
    # scales are amax / 448: the once-rounded quotient, which a reciprocal multiply misses at times
    amax = torch.rand(4096) * 8
    for number in (448.0, 127, 6.0, 15):
        assert torch.equal(formats.divide(amax, number), (amax.double() / number).float())
