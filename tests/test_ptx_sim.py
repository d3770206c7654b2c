"""tests/ptx_sim.py's arithmetic against torch's own conversions and IEEE arithmetic (round to
nearest even, subnormals kept), and its instructions against their PTX definitions."""

import struct
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ptx_sim

finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


def _bits16(x: float, dtype: torch.dtype) -> int:
    return torch.tensor([x], dtype=torch.float32).to(dtype).view(torch.int16).item() & 0xFFFF


def _f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


@settings(max_examples=400, deadline=None)
@given(finite_f32)
def test_rounding_to_bf16_and_fp16_is_torchs(x):
    for fmt, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        assert ptx_sim.encode(Fraction(x), fmt, negative_zero=str(x).startswith("-")) == _bits16(x, dtype)


@settings(max_examples=400, deadline=None)
@given(finite_f32, finite_f32)
def test_f32_add_is_ieee(a, b):
    want = torch.tensor([a], dtype=torch.float32) + torch.tensor([b], dtype=torch.float32)
    if torch.isfinite(want).all():
        got = ptx_sim.run_asm("add.rn.f32 $0, $1, $2;", [_f32_bits(a), _f32_bits(b)], 1)[0]
        assert ptx_sim.decode(got, "f32") == Fraction(want.item())


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF))
def test_prmt_picks_and_sign_extends_bytes(a, b, selector):
    got = ptx_sim.run_asm("prmt.b32 $0, $1, $2, $3;", [a, b, selector], 1)[0]
    source = (b << 32 | a).to_bytes(8, "little")
    for i in range(4):
        nibble = selector >> (4 * i) & 0xF
        byte = source[nibble & 7]
        want = (0xFF if byte & 0x80 else 0) if nibble & 8 else byte
        assert got >> (8 * i) & 0xFF == want


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_lop3_lookup_tables(a, b, c):
    run = lambda lut: ptx_sim.run_asm(f"lop3.b32 $0, $1, $2, $3, {lut};", [a, b, c], 1)[0]  # noqa: E731
    assert run(0xEA) == (a & b) | c
    assert run(0x96) == a ^ b ^ c
    assert run(0xF0) == a and run(0xCC) == b and run(0xAA) == c


def test_an_unknown_instruction_is_refused():
    import pytest

    with pytest.raises(NotImplementedError, match="cvt.rn.f16.f32"):
        ptx_sim.run_asm("cvt.rn.f16.f32 $0, $1;", [0], 1)
