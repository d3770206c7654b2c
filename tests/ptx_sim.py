"""A small simulator of the PTX that moekit's kernels inline (``tl.inline_asm_elementwise``), so that
the Triton interpreter can run the inline-PTX code paths on the CPU, bit for bit.

It knows only the instructions moekit uses, each from the PTX ISA's definition, and refuses any
other with an error (a new instruction must be added here, with its semantics, before a CPU test can
run it). Floating-point results are computed exactly (fractions) and rounded once to nearest even,
subnormals kept, as the ``.rn`` forms without ``.ftz`` do. The GPU tests run the same kernels on the
real hardware (tests_gpu/), which is what checks this simulator.

``patched_interpreter()`` makes the interpreter's ``create_inline_asm`` run the simulator: inputs
are packed into 32-bit registers as Triton packs them (``pack`` elements per invocation, narrow
elements several to a register, lowest first), outputs unpacked the same way.
"""

from __future__ import annotations

import contextlib
import re
from fractions import Fraction

import numpy as np

MASK = 0xFFFFFFFF

# (exponent bits, mantissa bits) of the float formats the instructions name
_FORMATS = {"f32": (8, 23), "bf16": (8, 7), "f16": (5, 10)}


def decode(bits: int, fmt: str) -> Fraction | None:
    """The value of ``bits`` in ``fmt`` (None for inf / NaN); a negative zero is returned as 0 with
    ``is_negative_zero`` telling them apart."""
    ebits, mbits = _FORMATS[fmt]
    exp = (bits >> mbits) & ((1 << ebits) - 1)
    man = bits & ((1 << mbits) - 1)
    if exp == (1 << ebits) - 1:
        return None
    bias = (1 << (ebits - 1)) - 1
    value = Fraction(man, 1 << mbits) * Fraction(2) ** (1 - bias) if exp == 0 else \
        Fraction((1 << mbits) + man, 1 << mbits) * Fraction(2) ** (exp - bias)
    return -value if bits >> (ebits + mbits) & 1 else value


def _is_negative_zero(bits: int, fmt: str) -> bool:
    ebits, mbits = _FORMATS[fmt]
    return bits == 1 << (ebits + mbits)


def encode(x: Fraction, fmt: str, negative_zero: bool = False) -> int:
    """``x`` rounded to nearest even in ``fmt`` (subnormals kept, overflow to infinity)."""
    ebits, mbits = _FORMATS[fmt]
    bias = (1 << (ebits - 1)) - 1
    sign = 1 if x < 0 or (x == 0 and negative_zero) else 0
    a = abs(x)
    if a == 0:
        return sign << (ebits + mbits)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # floor(log2 a) or one more
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, 1 - bias)
    scaled = a / Fraction(2) ** (e - mbits)
    n = int(scaled)
    rest = scaled - n
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n & 1):
        n += 1
    if n == 1 << (mbits + 1):
        n >>= 1
        e += 1
    if e > bias:
        return (sign << (ebits + mbits)) | (((1 << ebits) - 1) << mbits)
    if n < 1 << mbits:  # subnormal
        return (sign << (ebits + mbits)) | n
    return (sign << (ebits + mbits)) | ((e + bias) << mbits) | (n - (1 << mbits))


def _fma(a: int, b: int, c: int, fmt: str) -> int:
    va, vb, vc = decode(a, fmt), decode(b, fmt), decode(c, fmt)
    if va is None or vb is None or vc is None:
        raise ValueError(f"ptx_sim: inf/NaN operand in fma.{fmt} ({a:#x}, {b:#x}, {c:#x})")
    product_negative = (va < 0 or _is_negative_zero(a, fmt)) != (vb < 0 or _is_negative_zero(b, fmt))
    exact = va * vb + vc
    # an exact zero sum is -0 only when both terms are -0 (round to nearest)
    both_negative_zeros = exact == 0 and va * vb == 0 and vc == 0 and product_negative and _is_negative_zero(c, fmt)
    return encode(exact, fmt, both_negative_zeros)


def _pairwise(fn, *regs) -> int:
    """Apply ``fn`` to the low halves and to the high halves of 32-bit registers."""
    lo = fn(*(r & 0xFFFF for r in regs))
    hi = fn(*(r >> 16 & 0xFFFF for r in regs))
    return (hi << 16 | lo) & MASK


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for index in range(8):
        if lut >> index & 1:
            out |= (a if index & 4 else ~a) & (b if index & 2 else ~b) & (c if index & 1 else ~c)
    return out & MASK


def _prmt(a: int, b: int, selector: int) -> int:
    """Default mode: four selector nibbles pick bytes of {b, a} (a = bytes 0-3); a nibble's bit 3
    replicates the sign bit of the picked byte."""
    source = (b & MASK) << 32 | (a & MASK)
    out = 0
    for i in range(4):
        nibble = selector >> (4 * i) & 0xF
        byte = source >> (8 * (nibble & 7)) & 0xFF
        if nibble & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _f32_op(op):
    def run(a: int, b: int) -> int:
        va, vb = decode(a, "f32"), decode(b, "f32")
        if va is None or vb is None:
            raise ValueError("ptx_sim: inf/NaN operand in an f32 op")
        return encode(op(va, vb), "f32")
    return run


# name -> (number of source operands, function of the source values -> destination)
_OPS = {
    "mov.b32": (1, lambda a: a & MASK),
    "and.b32": (2, lambda a, b: a & b & MASK),
    "or.b32": (2, lambda a, b: (a | b) & MASK),
    "xor.b32": (2, lambda a, b: (a ^ b) & MASK),
    "shl.b32": (2, lambda a, b: (a << min(b, 32)) & MASK),
    "shr.b32": (2, lambda a, b: (a & MASK) >> min(b, 32)),
    "mul.lo.u32": (2, lambda a, b: (a * b) & MASK),
    "add.u32": (2, lambda a, b: (a + b) & MASK),
    "lop3.b32": (4, _lop3),
    "prmt.b32": (3, _prmt),
    "add.rn.f32": (2, _f32_op(lambda x, y: x + y)),
    "sub.rn.f32": (2, _f32_op(lambda x, y: x - y)),
    "fma.rn.bf16x2": (3, lambda a, b, c: _pairwise(lambda x, y, z: _fma(x, y, z, "bf16"), a, b, c)),
    "fma.rn.f16x2": (3, lambda a, b, c: _pairwise(lambda x, y, z: _fma(x, y, z, "f16"), a, b, c)),
}


def _instructions(asm: str) -> list[tuple[str, list[str]]]:
    body = re.sub(r"//[^\n]*", "", asm).replace("{", " ").replace("}", " ")
    out = []
    for statement in body.split(";"):
        statement = statement.strip()
        if not statement or statement.startswith(".reg"):
            continue
        name, _, operands = statement.partition(" ")
        out.append((name.strip(), [o.strip() for o in operands.split(",")]))
    return out


def run_asm(asm: str, registers: list[int], outputs: int) -> list[int]:
    """Run ``asm`` on 32-bit values: ``registers`` are $outputs .. (the inputs); returns $0 .. $outputs-1."""
    env = {f"${outputs + i}": r & MASK for i, r in enumerate(registers)}

    def value(operand: str) -> int:
        if operand in env:
            return env[operand]
        if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", operand):
            return int(operand, 0) & MASK
        raise ValueError(f"ptx_sim: operand {operand!r} read before it was written")

    for name, operands in _instructions(asm):
        if name not in _OPS:
            raise NotImplementedError(f"ptx_sim does not know {name!r}: add its semantics to tests/ptx_sim.py")
        count, fn = _OPS[name]
        if len(operands) != count + 1:
            raise ValueError(f"ptx_sim: {name} takes {count + 1} operands, got {operands}")
        env[operands[0]] = fn(*(value(o) for o in operands[1:]))
    return [env[f"${i}"] for i in range(outputs)]


def _as_unsigned(data: np.ndarray) -> np.ndarray:
    return data.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[data.dtype.itemsize]).astype(np.uint64)


def elementwise(asm: str, inputs: list[np.ndarray], out_dtypes: list[np.dtype], pack: int) -> list[np.ndarray]:
    """tl.inline_asm_elementwise's semantics on broadcast numpy inputs: ``pack`` consecutive
    elements per invocation, narrow ones packed into 32-bit registers lowest first."""
    flat = [_as_unsigned(np.ascontiguousarray(x)).reshape(-1) for x in inputs]
    size = flat[0].size
    if size % pack:
        raise ValueError(f"ptx_sim: {size} elements do not split into packs of {pack}")

    def per_reg(itemsize: int) -> int:
        return max(1, min(pack, 4 // itemsize))

    out_regs = [pack // per_reg(np.dtype(d).itemsize) for d in out_dtypes]
    outs = [np.zeros(size, dtype=np.uint64) for _ in out_dtypes]
    for start in range(0, size, pack):
        registers = []
        for x, data in zip(inputs, flat):
            n = per_reg(x.dtype.itemsize)
            bits = 8 * x.dtype.itemsize
            for r in range(pack // n):
                registers.append(sum(int(data[start + r * n + j]) << (bits * j) for j in range(n)))
        results = run_asm(asm, registers, sum(out_regs))
        for o, d in enumerate(out_dtypes):
            n = per_reg(np.dtype(d).itemsize)
            bits = 8 * np.dtype(d).itemsize
            first = sum(out_regs[:o])
            for r in range(out_regs[o]):
                for j in range(n):
                    outs[o][start + r * n + j] = results[first + r] >> (bits * j) & ((1 << bits) - 1)
    shape = np.broadcast(*inputs).shape
    return [out.astype({1: np.uint8, 2: np.uint16, 4: np.uint32}[np.dtype(d).itemsize]).view(d).reshape(shape)
            for out, d in zip(outs, out_dtypes)]


class _Call:
    def __init__(self, handles):
        self.handles = handles

    def get_result(self, i):
        return self.handles[i]


@contextlib.contextmanager
def patched_interpreter():
    """While active, the Triton interpreter runs inline PTX through this simulator."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder

    def create_inline_asm(self, asm, constraints, values, types, is_pure, pack):
        out_dtypes = [interpreter._get_np_dtype(t.scalar if hasattr(t, "scalar") else t) for t in types]
        inputs = np.broadcast_arrays(*(v.data for v in values))
        outs = elementwise(asm, list(inputs), out_dtypes, pack)
        return _Call([interpreter.TensorHandle(o, t.scalar if hasattr(t, "scalar") else t)
                      for o, t in zip(outs, types)])

    saved = builder.create_inline_asm
    builder.create_inline_asm = create_inline_asm
    try:
        yield
    finally:
        builder.create_inline_asm = saved
