"""Dequantizing a byte of two 4-bit codes, or two int8 codes, straight into the pair of 16-bit values
they hold, with half-precision pair arithmetic (the swapped weight-only loop, weight_only_swapped.py).

Why (sm90 SASS): the fp32 route costs ~7 instructions per weight element (make an fp32 from the
code's bits, subtract the zero point, multiply by the scale, convert), and 8 warps spent as long
issuing them as the tensor cores spent on the tile. A byte holds two neighbouring K columns, and
the dot's A operand holds neighbouring K columns as one 32-bit register of two 16-bit values, so
the byte can become that register directly:

- uint4: ``byte * 4097`` puts the low nibble at bit 0 and the high nibble at bit 16 (the byte and
  the byte shifted by 12 do not overlap); masking them and setting the bits of 128 (bf16: 0x4300)
  or 1024 (fp16: 0x6400) makes the pair (128 + lo, 128 + hi): the 16-bit spacing there is 1, so
  the codes are exact. One pair fma subtracts 128 plus the zero point (exact: small integers), one
  pair multiply applies the group scale. ~2 instructions per element.
- e2m1 (bf16 only): two multiplies place the magnitude bits (exponent, mantissa) at bits 6..8 and
  22..24 and the sign bits at 15 and 31, making bf16 values 2**-126 times the codes' (the zero
  exponent lands on bf16 subnormals, which the pair instructions keep); one pair multiply by
  2**126, one by the scale. ~3 instructions per element. e8m0 scales of at most 2
  (QuantizedMatrix.scales_at_most_two; blocks whose largest weight is below 16) take the 2**126
  into their pair (PAIRED_PTX_FOLDED): one multiply a pair fewer, and the scale pair is one
  multiply-add of its byte. e4m3 scales (below 2**9) always take 2**117 into their pair, the one
  multiply then left (quant_formats.E4M3_E2M1_REST, 2**9, stays in the epilogue).
- int8 (two neighbouring codes, pack=2): one byte permute puts code 0 at bit 0 and code 1 at bit
  16; two logic ops make the pairs (M + low 7 bits) and (M + 128 * sign bit) with M = 128 (bf16:
  0x4300) or 1024 (fp16: 0x6400), both exact; one pair fma takes their difference, the code itself
  (also exact: |code| <= 128). A zero point is one more pair fma (|code - zero| <= 255, exact), a
  group scale one pair multiply. 2-2.5 instructions per element (fp32 route: ~3.5); sm90 SASS of
  gemm1 at 128x128x64, 8 warps: 424 -> 284 instructions per K step (w8a16-ch), 531 -> 354 (g128).

The numerics differ from the fp32 route in one place: the group scale is rounded to the activation
dtype before it multiplies (as GPTQ/Marlin kernels do). e2m1 values times e8m0 or e4m3 scales are
exact either way. Under the interpreter (no inline PTX) the same values are computed in fp32 with
the same roundings (PAIRED_EMULATED); CI also runs the PTX text itself on the interpreter through a
simulator of its instructions (tests/ptx_sim.py), and tests_gpu runs it on the GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moekit.triton_ops.weight_only_loop import plain_scale_values

PAIRED_OFF = tl.constexpr(0)  # the fp32 route
PAIRED_EMULATED = tl.constexpr(1)  # the pair numerics computed in fp32 (the interpreter)
PAIRED_PTX = tl.constexpr(2)  # the pair numerics by inline PTX (the GPU)
PAIRED_PTX_FOLDED = tl.constexpr(3)  # PAIRED_PTX, e2m1's 2**126 folded into e8m0 scales of at most 2


def _uint4_registers(fp16: bool) -> str:
    """The uint4 PTX's registers: t, the nibble mask m, the magic number c (128 in bf16, 1024 in
    fp16: the bits the codes are or-ed into), one, and nz (-0, the fma's addend for a product)."""
    return f""".reg .b32 t, m, c, one, nz;
mov.b32 m, 0x000F000F;
mov.b32 c, {"0x64006400" if fp16 else "0x43004300"};
mov.b32 one, {"0x3C003C00" if fp16 else "0x3F803F80"};
mov.b32 nz, 0x80008000;"""


def _uint4_ptx(fp16: bool, grouped: bool) -> tl.constexpr:
    """$0 = the (low, high) pair of byte $1; $2 = minus (the magic number plus the zero
    point), $3 = the scale, each in both halves."""
    kind = "f16x2" if fp16 else "bf16x2"
    return tl.constexpr(f"""{{
{_uint4_registers(fp16)}
mul.lo.u32 t, $1, 4097;
lop3.b32 t, t, m, c, 0xEA;
fma.rn.{kind} t, t, one, $2;
{f"fma.rn.{kind} t, t, $3, nz;" if grouped else ""}
mov.b32 $0, t;
}}""")


_UINT4_BF16 = _uint4_ptx(False, False)
_UINT4_BF16_GROUPED = _uint4_ptx(False, True)
_UINT4_FP16 = _uint4_ptx(True, False)
_UINT4_FP16_GROUPED = _uint4_ptx(True, True)


def _pair_constant(bits16: int) -> tl.constexpr:
    """A 16-bit pattern in both halves, as the int32 ``tl.full`` takes."""
    pair = bits16 | bits16 << 16
    return tl.constexpr(pair - (1 << 32) if pair >= 1 << 31 else pair)


# Constant pair operands are made in the loop by tl.full: a pair computed from constants was hoisted
# out of the loop, and Triton then kept the asm out of the dot operand's layout (a shared-memory
# round trip per step, sm90 SASS).
_MINUS_136_BF16 = _pair_constant(0xC308)  # -(128 + 8): the magic number plus the symmetric midpoint
_MINUS_1032_FP16 = _pair_constant(0xE408)  # -(1024 + 8)
_TWO_126_BF16 = _pair_constant(0x7E80)  # 2**126
_TWO_126_SCALE_BITS = tl.constexpr(126 * 0x00800080)  # added to an e8m0 exponent pair: times 2**126

def _e2m1_ptx(folded: bool) -> tl.constexpr:
    """$0 = the (low, high) bf16 pair of byte $1 times $2 (2**126 or 2**117) times $3 (the scale);
    ``folded``: $3 (the scale times 2**126) only."""
    factor = "" if folded else "fma.rn.bf16x2 t, t, $2, nz;"
    return tl.constexpr(f"""{{
.reg .b32 a, b, t, m, nz;
mov.b32 m, 0x80008000;
mov.b32 nz, 0x80008000;
mul.lo.u32 a, $1, 0x40040;
mul.lo.u32 b, $1, 0x1001000;
and.b32 a, a, 0x01C001C0;
lop3.b32 t, b, m, a, 0xEA;
{factor}
fma.rn.bf16x2 t, t, $3, nz;
mov.b32 $0, t;
}}""")


_E2M1_BF16 = _e2m1_ptx(False)
_E2M1_BF16_FOLDED = _e2m1_ptx(True)


# Which output ($0-$3) of the word PTX the codes at bit 4i of its register make, and the per-row
# operands it reads ($5-$8, $9-$12): Triton packs four bytes in the wgmma operand's register order,
# [row r byte 2i, row r+8 byte 2i, row r byte 2i+1, row r+8 byte 2i+1] (quant/code_order.py), so
# bits 0 and 4 hold row r's two pairs (outputs 0 and 2) and bits 8 and 12 row r+8's (outputs 1, 3).
_WORD_OUTPUT_AT_BIT = {0: 0, 4: 2, 8: 1, 12: 3}


def _uint4_word_ptx(fp16: bool, grouped: bool) -> tl.constexpr:
    """$0..$3 = the (low, high) pairs of the four bytes packed in $4 (MMA order, see above: a pair's
    codes at bits p and 16 + p, one shift and one mask make both halves); $5..$8 = minus (the magic
    number plus the zero point), $9..$12 = the scale, each output's own, in both halves."""
    kind = "f16x2" if fp16 else "bf16x2"
    steps = []
    for bit, out in _WORD_OUTPUT_AT_BIT.items():
        if bit:
            steps.append(f"shr.b32 t, $4, {bit};")
        steps.append(f"lop3.b32 t, {'t' if bit else '$4'}, m, c, 0xEA;")
        if grouped:
            steps.append(f"fma.rn.{kind} t, t, one, ${5 + out};")
            steps.append(f"fma.rn.{kind} ${out}, t, ${9 + out}, nz;")
        else:
            steps.append(f"fma.rn.{kind} ${out}, t, one, ${5 + out};")
    body = "\n".join(steps)
    return tl.constexpr(f"""{{
{_uint4_registers(fp16)}
{body}
}}""")


def _e2m1_word_ptx(folded: bool) -> tl.constexpr:
    """$0..$3 = the bf16 pairs of the four bytes packed in $4 (as the uint4 word PTX) times $5..$8
    (2**126 or 2**117) times $9..$12 (the scale): a pair's magnitudes moved to bits 6-8 and 22-24,
    its signs to bits 15 and 31, each by one shift of the whole register. ``folded``: times $9..$12
    only (the scale times 2**126; $5..$8 unread)."""
    steps = []
    for bit, out in _WORD_OUTPUT_AT_BIT.items():
        magnitude = 6 - bit
        steps.append(f"shl.b32 a, $4, {magnitude};" if magnitude > 0 else f"shr.b32 a, $4, {-magnitude};")
        steps.append("and.b32 a, a, 0x01C001C0;")
        sign = 12 - bit
        if sign:
            steps.append(f"shl.b32 b, $4, {sign};")
        steps.append(f"lop3.b32 t, {'b' if sign else '$4'}, nz, a, 0xEA;")
        if not folded:
            steps.append(f"fma.rn.bf16x2 t, t, ${5 + out}, nz;")
        steps.append(f"fma.rn.bf16x2 ${out}, t, ${9 + out}, nz;")
    body = "\n".join(steps)
    return tl.constexpr(f"""{{
.reg .b32 a, b, t, nz;
mov.b32 nz, 0x80008000;
{body}
}}""")


UINT4_WORD_BF16 = _uint4_word_ptx(False, False)
UINT4_WORD_BF16_GROUPED = _uint4_word_ptx(False, True)
UINT4_WORD_FP16 = _uint4_word_ptx(True, False)
UINT4_WORD_FP16_GROUPED = _uint4_word_ptx(True, True)
E2M1_WORD_BF16 = _e2m1_word_ptx(False)
E2M1_WORD_BF16_FOLDED = _e2m1_word_ptx(True)


@triton.constexpr_function
def _int8_asm(fp16, has_zero, grouped):
    """$0 = the pair of the two int8 codes packed in $1 (bytes 0 and 1); then $2 = minus the zero
    point (when has_zero) and the scale (when grouped), each a pair of the dot dtype. (A constexpr
    function: Triton 3.6 refuses a plain helper function called from it.)"""
    kind = "f16x2" if fp16 else "bf16x2"
    scale = "$3" if has_zero else "$2"
    zero_step = f"fma.rn.{kind} a, a, one, $2;" if has_zero else ""
    scale_step = f"fma.rn.{kind} a, a, {scale}, nz;" if grouped else ""
    return f"""{{
.reg .b32 p, a, b, m, one, minus_one, nz;
mov.b32 m, {"0x64006400" if fp16 else "0x43004300"};
mov.b32 one, {"0x3C003C00" if fp16 else "0x3F803F80"};
mov.b32 minus_one, {"0xBC00BC00" if fp16 else "0xBF80BF80"};
mov.b32 nz, 0x80008000;
prmt.b32 p, $1, 0, 0x5140;
lop3.b32 a, p, 0x007F007F, m, 0xEA;
lop3.b32 b, p, 0x00800080, m, 0xEA;
fma.rn.{kind} a, b, minus_one, a;
{zero_step}
{scale_step}
mov.b32 $0, a;
}}"""


@triton.jit
def _ptx_pair(asm: tl.constexpr, byte, a, b, DOT_DTYPE: tl.constexpr):
    """The (low, high) DOT_DTYPE values the PTX makes of each byte (int32), given the per-row pair
    operands ``a`` and ``b`` ([rows, 1] int32). (One int32 result, split here: Triton carries the dot
    operand's layout back through a one-result asm, not a two-result one.)"""
    pair = tl.inline_asm_elementwise(asm, "=r,r,r,r", [byte, a, b], dtype=tl.int32, is_pure=True, pack=1)
    return split_pairs(pair, DOT_DTYPE)


@triton.jit
def _pair_bits(x, DOT_DTYPE: tl.constexpr):
    """[rows] fp32 -> the int32 whose two halves both hold x in DOT_DTYPE (rounded)."""
    half = x.to(DOT_DTYPE).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return half | (half << 16)


@triton.jit
def _scale_in_dtype(s, SFMT: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The [rows] group scales rounded to DOT_DTYPE, back in fp32 (the emulation's rounding)."""
    return plain_scale_values(s, SFMT).to(DOT_DTYPE).to(tl.float32)


@triton.jit
def uint4_operands(rows: tl.constexpr, s, z, HAS_ZERO: tl.constexpr, GROUPED: tl.constexpr, SFMT: tl.constexpr,
                    DOT_DTYPE: tl.constexpr):
    """The per-row pair operands of the uint4 PTX: minus (the magic number plus the zero point), and
    the group scale (the offset again when not GROUPED: the PTX then reads no scale)."""
    FP16: tl.constexpr = DOT_DTYPE == tl.float16
    if HAS_ZERO:
        offset = _pair_bits(-(z.to(tl.float32) + (1024.0 if FP16 else 128.0)), DOT_DTYPE)[:, None]
    elif FP16:
        offset = tl.full((rows, 1), _MINUS_1032_FP16, tl.int32)
    else:
        offset = tl.full((rows, 1), _MINUS_136_BF16, tl.int32)
    if GROUPED:
        scale = _pair_bits(plain_scale_values(s, SFMT), DOT_DTYPE)[:, None]
    else:
        scale = offset
    return offset, scale


@triton.jit
def paired_uint4(stored, s, z, HAS_ZERO: tl.constexpr, GROUPED: tl.constexpr, SFMT: tl.constexpr,
                 MODE: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """[rows, HALF] bytes of uint4 codes -> (low, high) [rows, HALF] values in DOT_DTYPE: code minus
    the zero point (``z`` per row, else 8), times the group scale ``s`` per row when GROUPED (else
    the epilogue scales)."""
    byte = stored.to(tl.int32) & 0xFF
    if MODE == PAIRED_PTX:
        FP16: tl.constexpr = DOT_DTYPE == tl.float16
        offset, scale = uint4_operands(stored.shape[0], s, z, HAS_ZERO, GROUPED, SFMT, DOT_DTYPE)
        if FP16 and GROUPED:
            lo, hi = _ptx_pair(_UINT4_FP16_GROUPED, byte, offset, scale, DOT_DTYPE)
        elif FP16:
            lo, hi = _ptx_pair(_UINT4_FP16, byte, offset, scale, DOT_DTYPE)
        elif GROUPED:
            lo, hi = _ptx_pair(_UINT4_BF16_GROUPED, byte, offset, scale, DOT_DTYPE)
        else:
            lo, hi = _ptx_pair(_UINT4_BF16, byte, offset, scale, DOT_DTYPE)
    else:
        zero = z.to(tl.float32)[:, None] if HAS_ZERO else 8.0
        lo = (byte & 0xF).to(tl.float32) - zero
        hi = (byte >> 4).to(tl.float32) - zero
        if GROUPED:
            scale = _scale_in_dtype(s, SFMT, DOT_DTYPE)[:, None]
            lo = lo * scale
            hi = hi * scale
        lo = lo.to(DOT_DTYPE)
        hi = hi.to(DOT_DTYPE)
    return lo, hi


@triton.jit
def word_ptx(asm: tl.constexpr, stored, a, b):
    """Four int32 results per four bytes of ``stored`` packed into a register: the PTX ``asm`` run
    once per register, with the per-row pair operands ``a`` and ``b`` (int32, broadcast)."""
    return tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r", [stored, a, b], dtype=tl.int32,
                                     is_pure=True, pack=4)


@triton.jit
def paired_uint4_words(stored, s, z, HAS_ZERO: tl.constexpr, GROUPED: tl.constexpr, SFMT: tl.constexpr,
                       DOT_DTYPE: tl.constexpr):
    """[rows, HALF] bytes of uint4 codes in MMA-order words (quant/code_order.py), in the wgmma
    operand's layout -> [rows, HALF] int32 pairs, pair j of each word where its byte j is (as
    paired_uint4 makes them: code minus the zero point, times the group scale when GROUPED). PTX
    only (the GPU); right only where Triton packs the bytes as _WORD_OUTPUT_AT_BIT says."""
    offset, scale = uint4_operands(stored.shape[0], s, z, HAS_ZERO, GROUPED, SFMT, DOT_DTYPE)
    return uint4_word_ptx(stored, offset, scale, GROUPED, DOT_DTYPE)


@triton.jit
def uint4_word_ptx(stored, offset, scale, GROUPED: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """word_ptx with the uint4 PTX for DOT_DTYPE, with or without the group scale."""
    if DOT_DTYPE == tl.float16 and GROUPED:
        return word_ptx(UINT4_WORD_FP16_GROUPED, stored, offset, scale)
    elif DOT_DTYPE == tl.float16:
        return word_ptx(UINT4_WORD_FP16, stored, offset, scale)
    elif GROUPED:
        return word_ptx(UINT4_WORD_BF16_GROUPED, stored, offset, scale)
    else:
        return word_ptx(UINT4_WORD_BF16, stored, offset, scale)


@triton.constexpr_function
def e2m1_folds(sfmt, mode):
    """Whether the scale pair carries the factor e2m1's bits leave out (the folded PTX): e4m3 scales
    always, e8m0 ones of at most 2 (PAIRED_PTX_FOLDED)."""
    return sfmt == 2 or mode == PAIRED_PTX_FOLDED.value


@triton.jit
def e2m1_operands(rows: tl.constexpr, s, SFMT: tl.constexpr, DOT_DTYPE: tl.constexpr, FOLDED: tl.constexpr = False):
    """The per-row pair operands of the e2m1 PTX: the factor the code bits leave out (2**126), and
    the scale. An e8m0 scale's bf16 pair straight from its bits: the byte is the bf16 exponent (byte
    0, 2**-127, is the subnormal 0x0040: the maximum keeps it; byte 255, NaN, becomes infinity); 3
    instructions a row where the fp32 route took 9. FOLDED (e8m0 bytes of at most 128): the scale
    times 2**126, exponent byte + 126 (at most 254: finite), one multiply-add. e4m3 scales (FOLDED
    or not): the scale times 2**117 (exact, at most 448 * 2**117 < 2**126; 2**9 stays in the
    epilogue). Folded, the factor is the scale again (the folded PTX reads no factor)."""
    if SFMT == 2:
        scale = _pair_bits(plain_scale_values(s, SFMT) * 2.0**117, DOT_DTYPE)[:, None]
        return scale, scale
    if SFMT == 1 and FOLDED:
        scale = ((s.to(tl.int32) & 0xFF) * 0x00800080 + _TWO_126_SCALE_BITS)[:, None]
        return scale, scale
    factor = tl.full((rows, 1), _TWO_126_BF16, tl.int32)
    if SFMT == 1:
        scale = tl.maximum((s.to(tl.int32) & 0xFF) * 0x00800080, 0x00400040)[:, None]
    else:
        scale = _pair_bits(plain_scale_values(s, SFMT), DOT_DTYPE)[:, None]
    return factor, scale


@triton.jit
def paired_e2m1(stored, s, SFMT: tl.constexpr, MODE: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """[rows, HALF] bytes of e2m1 codes -> (low, high) [rows, HALF] bf16 values times the group
    scale ``s`` per row (times 2**-9 for e4m3 scales, as the fp32 route leaves it). MODE: PAIRED_PTX,
    or PAIRED_PTX_FOLDED for e8m0 scales of at most 2."""
    FOLDED: tl.constexpr = e2m1_folds(SFMT, MODE)
    factor, scale = e2m1_operands(stored.shape[0], s, SFMT, DOT_DTYPE, FOLDED)
    byte = stored.to(tl.int32) & 0xFF
    if FOLDED:
        return _ptx_pair(_E2M1_BF16_FOLDED, byte, factor, scale, DOT_DTYPE)
    return _ptx_pair(_E2M1_BF16, byte, factor, scale, DOT_DTYPE)


@triton.jit
def paired_e2m1_words(stored, s, SFMT: tl.constexpr, MODE: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """paired_e2m1 for codes in MMA-order words: [rows, HALF] int32 pairs, pair j of each word where
    its byte j is."""
    FOLDED: tl.constexpr = e2m1_folds(SFMT, MODE)
    factor, scale = e2m1_operands(stored.shape[0], s, SFMT, DOT_DTYPE, FOLDED)
    if FOLDED:
        return word_ptx(E2M1_WORD_BF16_FOLDED, stored, factor, scale)
    return word_ptx(E2M1_WORD_BF16, stored, factor, scale)


@triton.jit
def split_pairs(pairs, DOT_DTYPE: tl.constexpr):
    """int32 pairs -> their (low, high) halves as DOT_DTYPE values."""
    lo = pairs.to(tl.int16).to(DOT_DTYPE, bitcast=True)
    hi = (pairs >> 16).to(tl.int16).to(DOT_DTYPE, bitcast=True)
    return lo, hi


@triton.jit
def paired_int8(stored, s, z, HAS_ZERO: tl.constexpr, GROUPED: tl.constexpr, MODE: tl.constexpr,
                DOT_DTYPE: tl.constexpr):
    """[rows, cols] int8 codes -> [rows, cols] values in DOT_DTYPE: code minus the zero point (``z``
    per row, when HAS_ZERO), times the group scale ``s`` per row rounded to DOT_DTYPE (when GROUPED,
    else the epilogue scales)."""
    if MODE == PAIRED_PTX:
        FP16: tl.constexpr = DOT_DTYPE == tl.float16
        asm: tl.constexpr = _int8_asm(FP16, HAS_ZERO, GROUPED)
        minus_zero = (-(z.to(tl.float32))).to(DOT_DTYPE)[:, None]
        scale = plain_scale_values(s, 0).to(DOT_DTYPE)[:, None]
        if HAS_ZERO and GROUPED:
            w = tl.inline_asm_elementwise(asm, "=r,r,r,r", [stored, minus_zero, scale], dtype=tl.int16,
                                          is_pure=True, pack=2)
        elif HAS_ZERO:
            w = tl.inline_asm_elementwise(asm, "=r,r,r", [stored, minus_zero], dtype=tl.int16, is_pure=True,
                                          pack=2)
        elif GROUPED:
            w = tl.inline_asm_elementwise(asm, "=r,r,r", [stored, scale], dtype=tl.int16, is_pure=True, pack=2)
        else:
            w = tl.inline_asm_elementwise(asm, "=r,r", [stored], dtype=tl.int16, is_pure=True, pack=2)
        w = w.to(DOT_DTYPE, bitcast=True)  # (16-bit integers out: triton 3.6 takes no constexpr dtype there)
    else:
        w = stored.to(tl.float32)
        if HAS_ZERO:
            w = w - z.to(tl.float32)[:, None]
        if GROUPED:
            w = w * plain_scale_values(s, 0).to(DOT_DTYPE).to(tl.float32)[:, None]
        w = w.to(DOT_DTYPE)
    return w
