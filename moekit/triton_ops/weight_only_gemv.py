"""Decode-sized weight-only GEMMs (w4a16, w8a16, mxfp4, nvfp4) on CUDA cores: one, two or four rows
per expert block, every weight element decoded by one to three integer ops and met by one FMA per row.

Why not the tensor-core loop (weight_only_loop.py) at decode: with a row or two per expert the MMA
does no useful work, while feeding it costs ~6-10 instructions per weight element (dequantize to
the operand's dtype, move into the MMA layout); 4-bit weights then stream at a fraction of the
memory bandwidth (about 2.5 instructions per element keep up with an H200's HBM).

How a code becomes a number with no conversion instruction:

- uint4 / int8 codes are masked in place inside their 32-bit word: ``word & (0xF << p)`` read as
  fp32 is the subnormal ``n * 2**(p - 149)``, exact. The activation that meets it was multiplied by
  ``2**(64 - p)`` beforehand (the *operand* below), so every product is ``n * a * 2**-85`` whatever
  p. Signed int8 codes become offset-binary (q + 128) by an XOR folded into the same op. The zero
  point (8 for symmetric uint4, 128 for int8, or the stored one) leaves the per-element work:
  sum((n - z) a) = sum(n a) - z sum(a), with sum(a) taken per slot from the operand.
- e2m1 codes: the exponent and mantissa bits moved to the top of an fp32 exponent make the value
  times 2**-126 (subnormal for code 1), the sign bit moved to bit 31; the activation carries 2**64.

The operand: an fp32 copy of the GEMM's input rows, each value pre-multiplied by its factor, in
blocks of PERM_SLOTS slots (a slot is WPS consecutive 32-bit words of codes, EPW codes each); within
a block the values are ordered code position first, then slot, then word (j * PERM_SLOTS * WPS +
slot * WPS + i for code j of word i), so that each code position's activations load as one vector
per thread, neighbouring threads reading neighbouring bytes. gemm1's input is written by
``prepare_operand``; gemm1's epilogue writes gemm2's input directly in this form.

Each thread owns a slot (4 words: one 16-byte load) of a few weight rows per step; a slot lies in
one scale group (nvfp4's 16-code groups take 2-word slots), so its sum is scaled once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moekit.quant.scale_layout import kernel_scales
from moekit.quant.spec import QuantizedMatrix, QuantSpec, WeightFormat
from moekit.triton_ops.launcher import cdiv, launch, next_pow2
from moekit.triton_ops.experts_kernels import ACT_CODE, _activate, _block_expert, gate_up_rows
from moekit.triton_ops.quant_formats import e8m0_values

INT8_FLIP = tl.constexpr(-0x7F7F7F80)  # 0x80808080 as int32: q ^ 0x80 = q + 128 for each byte
SIGN_BIT = tl.constexpr(-0x80000000)
E2M1_BITS = tl.constexpr(0x01C00000)  # exponent and mantissa of an e2m1 code at the top of an fp32 exponent
# Slots per operand block: each code position's values of 8 slots lie together, so the threads that
# own neighbouring slots read one 128-byte line per code position (4-bit, 4-word slots).
PERM_SLOTS = tl.constexpr(8)
OPERAND_SHIFT = 64  # log2 of the activations' factor (before the code position's 2**-p)
INT_RESULT = tl.constexpr(2.0 ** (149 - OPERAND_SHIFT))  # undoes 2**(p-149) * 2**(64-p)
E2M1_RESULT = tl.constexpr(2.0 ** (126 - OPERAND_SHIFT))  # undoes 2**-126 * 2**64


_WFMT = {WeightFormat.INT8: 1, WeightFormat.UINT4: 2, WeightFormat.E2M1: 3}


def codes_per_word(weight: WeightFormat) -> int:
    return 8 if weight.packed else 4


def words_per_slot(spec: QuantSpec, mma_order: bool = False) -> int:
    """4 (one 16-byte load), fewer when a scale group holds fewer words (nvfp4: 16 codes = 2); 4 for
    codes in MMA order, whose slot is a run (nvfp4's then holds two groups: _row_step)."""
    epw = codes_per_word(spec.weight)
    return 4 if spec.group_k == 0 or mma_order else min(4, spec.group_k // epw)


def gemv_supports_scheme(spec: QuantSpec, hidden: int, inter: int) -> bool:
    """Whether the decode GEMV runs this scheme at these sizes (else the tensor-core loop)."""
    if not spec.weight_only or spec.weight not in _WFMT or spec.group_n != 1:
        return False
    epw = codes_per_word(spec.weight)
    words_per_group = spec.group_k // epw
    if spec.group_k and (spec.group_k % epw or words_per_group & (words_per_group - 1)):
        return False
    slot = epw * words_per_slot(spec)
    return hidden % slot == 0 and inter % slot == 0  # K masks then cover whole slots (vector loads)


def gemv_supports(spec: QuantSpec, w13: QuantizedMatrix, hidden: int, inter: int) -> bool:
    """gemv_supports_scheme, and w13's codes (w2's are alike) readable as words, without act-order."""
    return gemv_supports_scheme(spec, hidden, inter) and w13.g_idx is None and _word_view(w13.data) is not None


def _word_view(data: torch.Tensor) -> torch.Tensor | None:
    """The codes as int32 words [E, N, K / EPW] (None when the storage cannot be seen so)."""
    aligned = data.storage_offset() % 4 == 0 and all(s % 4 == 0 for s in data.stride()[:-1])
    if data.stride(-1) != 1 or data.shape[-1] % 4 or not aligned:
        return None
    return data.view(torch.int32)


@dataclass(frozen=True)
class GemvOperand:
    """A GEMM input in the operand form (see the module docstring): fp32 [R, ceil(K / slot) * slot]."""

    values: torch.Tensor
    k: int  # the logical columns
    mma_order: bool = False  # laid out for codes in MMA order (quant/code_order.py)


@triton.jit
def _operand_position(cols, EPW: tl.constexpr, WPS: tl.constexpr, MMA_ORDER: tl.constexpr = False):
    """Where logical column ``cols`` goes in the operand, and its code position j in its word: in
    blocks of PERM_SLOTS slots, code position first, then slot, then word (see the module docstring).
    MMA_ORDER: the codes are stored in quant/code_order.py's runs (a slot of 4 words is one run):
    the column's code sits at another word and position of its slot, and its activation goes there."""
    SLOT: tl.constexpr = EPW * WPS
    BLOCK: tl.constexpr = PERM_SLOTS * SLOT
    in_block = cols % BLOCK
    if MMA_ORDER:  # plain byte b = 8c + 4h + q of the run is pair x = 2c + h of word q, its low code
        b = (in_block % SLOT) // 2  # at nibble 4c + h, its high code at nibble 4c + h + 2
        word = b % 4
        j = (b // 8) * 4 + (b // 4) % 2 + 2 * (cols % 2)
    else:
        word = (in_block % SLOT) // EPW
        j = cols % EPW
    return (cols // BLOCK) * BLOCK + j * (PERM_SLOTS * WPS) + (in_block // SLOT) * WPS + word, j


@triton.jit
def _operand_offsets(slot_abs, WPS: tl.constexpr, EPW: tl.constexpr):
    """Operand offsets of code position 0 of slots ``slot_abs`` [G], word by word: [G, WPS]."""
    BLOCK: tl.constexpr = PERM_SLOTS * WPS * EPW
    first = (slot_abs // PERM_SLOTS) * BLOCK + (slot_abs % PERM_SLOTS) * WPS
    return first[:, None] + tl.arange(0, WPS)[None, :]


@triton.jit
def _position_factor(j, WFMT: tl.constexpr):
    """2**(64 - p) for a code at bit p of its word (p as _code_values masks it); 2**64 for e2m1."""
    if WFMT == 2:
        p = tl.where(j <= 4, 4 * j, 4 * (j - 3))
    elif WFMT == 1:
        p = 8 * (j % 2)
    else:
        p = j * 0
    return ((127 + 64 - p) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _prepare_operand(x_ptr, out_ptr, K, stride_xm, stride_om, WFMT: tl.constexpr, EPW: tl.constexpr,
                     WPS: tl.constexpr, BLOCK: tl.constexpr, MMA_ORDER: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < K
    x = tl.load(x_ptr + row * stride_xm + cols, mask=ok, other=0.0).to(tl.float32)
    pos, j = _operand_position(cols, EPW, WPS, MMA_ORDER)
    tl.store(out_ptr + row * stride_om + pos, x * _position_factor(j, WFMT), mask=ok)


def operand_columns(spec: QuantSpec, k: int, mma_order: bool = False) -> int:
    """Columns of an operand of ``k`` logical ones: whole blocks (a last partial block is padded)."""
    block = PERM_SLOTS.value * codes_per_word(spec.weight) * words_per_slot(spec, mma_order)
    return cdiv(k, block) * block


def prepare_operand(x: torch.Tensor, spec: QuantSpec, mma_order: bool = False) -> GemvOperand:
    """gemm1's input [T, K] (any float dtype) in the operand form (for codes in MMA order: mma_order)."""
    rows, k = x.shape
    out = torch.empty(rows, operand_columns(spec, k, mma_order), dtype=torch.float32, device=x.device)
    block = min(1024, next_pow2(k))
    if rows:
        launch(_prepare_operand, (rows, cdiv(k, block)), (x, out, k, x.stride(0), out.stride(0)),
               dict(WFMT=_WFMT[spec.weight], EPW=codes_per_word(spec.weight), WPS=words_per_slot(spec, mma_order),
                    BLOCK=block, MMA_ORDER=mma_order), 4, 1)
    return GemvOperand(out, k, mma_order)


@triton.jit
def _code_values(W, W8, J: tl.constexpr, WFMT: tl.constexpr):
    """Code J of every word as fp32 (see the module docstring). ``W8`` is the words shifted right
    by 8 (e2m1) or 12 (uint4) or 16 (int8, after the XOR), computed once per word."""
    if WFMT == 2:  # uint4 at bit p = 4J (J <= 4), or 4(J - 3) in W8
        if J <= 4:
            bits = W & (0xF << (4 * J))
        else:
            bits = W8 & (0xF << (4 * (J - 3)))
    elif WFMT == 1:  # int8 + 128 at bit 8 (J % 2) of W (XORed with INT8_FLIP) or W8
        if J <= 1:
            bits = W & (0xFF << (8 * J))
        else:
            bits = W8 & (0xFF << (8 * (J - 2)))
    else:  # e2m1: one multiply puts copies of the code at bits 22-25 and 28-31; the mask keeps
        # exponent+mantissa of the first and the sign of the second
        if J <= 5:
            q = (W & (0xF << (4 * J))) * ((1 << (22 - 4 * J)) + (1 << (28 - 4 * J)))
        else:
            q = (W8 & (0xF << (4 * (J - 2)))) * ((1 << (22 - 4 * (J - 2))) + (1 << (28 - 4 * (J - 2))))
        bits = q & (E2M1_BITS | SIGN_BIT)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _load(ptrs, ok, EVEN: tl.constexpr):
    """A step's code words [G, BLOCK_N, WPS], or a code position's activations [G, WPS]: masked
    (zeros past K or the last row) unless EVEN."""
    if EVEN:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=ok, other=0)


@triton.jit
def _shifted(W, WFMT: tl.constexpr):
    """The words as _code_values reads them, and their shifted twin (computed where used, so that a
    prefetched word is not waited for early)."""
    if WFMT == 1:
        W = W ^ INT8_FLIP
        return W, W >> 16
    elif WFMT == 2:
        return W, W >> 12
    else:
        return W, W >> 8


@triton.jit
def _meet(t, s, v, a, J: tl.constexpr, P: tl.constexpr, HAS_UNIT: tl.constexpr):
    """t += codes * activations (first position: t =), s += activations in units of 2**-p (for
    sum(a), when the format has a zero point)."""
    if J == 0:
        t = v * a[:, None, :]
        if HAS_UNIT:
            s = a * (1 << P)
    else:
        t += v * a[:, None, :]
        if HAS_UNIT:
            s += a * (1 << P)
    return t, s


@triton.jit
def _fold(acc, t, s, scale, zero, WFMT: tl.constexpr, GROUP_K: tl.constexpr):
    """acc += the step's slot sums: minus zero point x sum(a), times the slot's group scale."""
    c = tl.sum(t, 2)
    if WFMT != 3:
        c = c - zero * (tl.sum(s, 1) * (2.0**-64) * (2.0**-85))[:, None]
    if GROUP_K > 0:
        c = c * scale
    return acc + c


@triton.jit
def _fold_slots(acc, t_first, t, s, scale, zero, WFMT: tl.constexpr, GROUP_K: tl.constexpr, TWO_GROUPS: tl.constexpr):
    """_fold of the step's slot sums ``t``; with two groups a slot (e2m1 only: no zero points),
    ``t_first`` and ``t`` are the first and second group's sums and ``scale`` holds both groups'."""
    if TWO_GROUPS:
        first, second = tl.split(scale)
        acc = _fold(_fold(acc, t_first, s, first, zero, WFMT, GROUP_K), t, s, second, zero, WFMT, GROUP_K)
    else:
        acc = _fold(acc, t, s, scale, zero, WFMT, GROUP_K)
    return acc


@triton.jit
def _group_scales(s_ptrs, mask, SFMT: tl.constexpr, EVEN: tl.constexpr):
    if EVEN:
        raw = tl.load(s_ptrs)
    else:
        raw = tl.load(s_ptrs, mask=mask, other=0)
    if SFMT == 0:
        return raw.to(tl.float32)
    elif SFMT == 1:
        return e8m0_values(raw.to(tl.int32) & 0xFF)
    else:  # the hardware's e4m3 conversion (2 instructions; decoding the bits took ~12). NaN codes,
        # never a valid scale, read as 480 in the interpreter.
        return raw.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)


@triton.constexpr_function
def two_groups_a_slot(group_k, wps, epw):
    """Whether a slot holds two scale groups: nvfp4 codes in MMA order (a slot is a 32-code run),
    whose words hold the first group at code positions 0-3 and the second at 4-7."""
    return group_k > 0 and wps * epw == 2 * group_k


@triton.constexpr_function
def _position_in_group(j, epw, two_groups):
    """Code position j's place among its group's positions in the word (0: its products start)."""
    return j % (epw // 2) if two_groups else j


@triton.jit
def _slot_scales(s_ptrs, mask, stride_sk, SFMT: tl.constexpr, GROUP_K: tl.constexpr, WPS: tl.constexpr,
                 EPW: tl.constexpr, EVEN: tl.constexpr):
    """The slots' group scales [G, BLOCK_N], or with two groups a slot both, joined: [G, BLOCK_N, 2]."""
    s = _group_scales(s_ptrs, mask, SFMT, EVEN)
    if two_groups_a_slot(GROUP_K, WPS, EPW):
        s = tl.join(s, _group_scales(s_ptrs + stride_sk, mask, SFMT, EVEN))
    return s


@triton.jit
def _zero_points(z_ptrs, mask, WFMT: tl.constexpr, HAS_ZERO: tl.constexpr, EVEN: tl.constexpr):
    """The code that means 0, in the products' units (int8 codes carry +128 from the XOR)."""
    if HAS_ZERO:
        if EVEN:
            z = tl.load(z_ptrs).to(tl.float32)
        else:
            z = tl.load(z_ptrs, mask=mask, other=0).to(tl.float32)
    else:
        z = 8.0 if WFMT == 2 else 0.0
    if WFMT == 1:
        z = z + 128.0
    return z


@triton.jit
def _step_weights(g_ptrs, u_ptrs, gs_rows, us_rows, gz_rows, uz_rows, kw, KW, col_ok, slot,
                  GATED: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr,
                  HAS_ZERO: tl.constexpr, WPS: tl.constexpr, EPW: tl.constexpr, EVEN: tl.constexpr,
                  stride_sk):
    """Everything one step reads of the weights from word ``kw`` on: gate (and up) codes, the
    scales and zero points of each slot (zeros past K or past the last row)."""
    s_ok = ((kw + slot * WPS) < KW)[:, None] & col_ok[None, :]
    if GROUP_K > 0:  # each slot's (first) scale group
        s_cols = ((kw * EPW + slot * (WPS * EPW)) // GROUP_K)[:, None] * stride_sk
    else:
        s_cols = slot[:, None] * 0
    W = _load(g_ptrs + kw, s_ok[:, :, None], EVEN)
    gs = _slot_scales(gs_rows + s_cols, s_ok, stride_sk, SFMT, GROUP_K, WPS, EPW, EVEN)
    gz = _zero_points(gz_rows + s_cols, s_ok, WFMT, HAS_ZERO, EVEN)
    if GATED:
        U = _load(u_ptrs + kw, s_ok[:, :, None], EVEN)
        us = _slot_scales(us_rows + s_cols, s_ok, stride_sk, SFMT, GROUP_K, WPS, EPW, EVEN)
        uz = _zero_points(uz_rows + s_cols, s_ok, WFMT, HAS_ZERO, EVEN)
    else:
        U, us, uz = W, gs, gz
    return W, gs, gz, U, us, uz


@triton.jit
def _row_step(acc_g, acc_u, a_base, a_offs, a_ok, Wg, Wg8, Wu, Wu8, gs, gz, us, uz,
              GATED: tl.constexpr, WFMT: tl.constexpr, GROUP_K: tl.constexpr, WPS: tl.constexpr,
              EPW: tl.constexpr, EVEN_K: tl.constexpr):
    """One step of K for one row of the block: each code position's activations loaded once and
    met by the gate (and up) codes of that position; then the slot sums folded into the row's
    accumulators."""
    HAS_UNIT: tl.constexpr = WFMT != 3
    TWO_GROUPS: tl.constexpr = two_groups_a_slot(GROUP_K, WPS, EPW)
    tg = acc_g[:, :, None] * 0.0  # (placeholders: _meet assigns them at position 0)
    tu = tg
    tg_first = tg
    tu_first = tg
    sg = a_offs * 0.0  # the activations' sums, the same for gate and up
    for J in tl.static_range(EPW):
        P = 4 * J if J <= 4 else 4 * (J - 3)  # the code's bit in its word (see _code_values)
        if WFMT == 1:
            P = 8 * (J % 2)
        if TWO_GROUPS and J == EPW // 2:  # the second group's codes: products summed apart
            tg_first = tg
            tu_first = tu
        a = _load(a_base + a_offs + J * (PERM_SLOTS * WPS), a_ok, EVEN_K)
        tg, sg = _meet(tg, sg, _code_values(Wg, Wg8, J, WFMT), a, _position_in_group(J, EPW, TWO_GROUPS), P,
                       HAS_UNIT)
        if GATED:
            tu, _sums = _meet(tu, sg, _code_values(Wu, Wu8, J, WFMT), a, _position_in_group(J, EPW, TWO_GROUPS), P,
                              False)
    acc_g = _fold_slots(acc_g, tg_first, tg, sg, gs, gz, WFMT, GROUP_K, TWO_GROUPS)
    if GATED:
        acc_u = _fold_slots(acc_u, tu_first, tu, sg, us, uz, WFMT, GROUP_K, TWO_GROUPS)
    return acc_g, acc_u


@triton.jit
def gemv_mainloop(a_base, a_row0, a_row1, a_row2, a_row3, stride_am, K, split, w_base, s_base, z_base, gate_rows,
                  up_rows, col_ok, stride_wn, stride_sn, stride_sk, SPLIT: tl.constexpr,
                  GATED: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr,
                  HAS_ZERO: tl.constexpr, BLOCK_M: tl.constexpr, G: tl.constexpr, WPS: tl.constexpr,
                  EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
    """(gate, up) of the operand rows a_row0 .. a_row{BLOCK_M - 1}, each fp32 [BLOCK_N] (8 values:
    rows past BLOCK_M are zeros), over part ``split`` of SPLIT parts of K, whole steps each (scaled,
    zero points applied, in real units except per-row factors: a scale spanning K, the global
    scale). ``w_base`` points at the expert's codes as int32 words; strides are in words (weights)
    and elements (scales). EVEN_K: the steps tile K (no K masks; else K is a whole number of slots);
    EVEN_N: every weight row exists (no row masks). The next step's weights are loaded before this
    step's arithmetic (register double buffering; ptxas moves those loads to the end of the body)."""
    EPW: tl.constexpr = 8 if WFMT >= 2 else 4
    STEP_W: tl.constexpr = G * WPS
    EVEN: tl.constexpr = EVEN_K and EVEN_N
    KW = K // EPW
    chunk = tl.cdiv(tl.cdiv(KW, STEP_W), SPLIT) * STEP_W
    k_lo = split * chunk
    k_hi = tl.minimum(KW, k_lo + chunk)
    # (rounded down to whole steps, so the compiler still sees 16-byte aligned word offsets)
    k_last = (k_hi - 1) // STEP_W * STEP_W
    k_first = tl.minimum(k_lo, (KW - 1) // STEP_W * STEP_W) if EVEN_K else k_lo  # a part past K: in bounds, unused
    slot = tl.arange(0, G)
    word = slot[:, None] * WPS + tl.arange(0, WPS)[None, :]  # [G, WPS]
    # tiles are [G, BLOCK_N, WPS], slots first: Triton then spreads a warp's threads over the slots
    # (neighbouring 16-byte pieces of a row) before the rows, and each thread's rows share the
    # activations it loads
    g_ptrs = w_base + gate_rows[None, :, None].to(tl.int64) * stride_wn + word[:, None, :]
    u_ptrs = w_base + up_rows[None, :, None].to(tl.int64) * stride_wn + word[:, None, :]
    gs_rows = s_base + gate_rows[None, :] * stride_sn
    us_rows = s_base + up_rows[None, :] * stride_sn
    gz_rows = z_base + gate_rows[None, :] * stride_sn
    uz_rows = z_base + up_rows[None, :] * stride_sn
    acc_g0 = tl.zeros((G, gate_rows.shape[0]), dtype=tl.float32)
    acc_u0 = acc_g0
    acc_g1 = acc_g0
    acc_u1 = acc_g0
    acc_g2 = acc_g0
    acc_u2 = acc_g0
    acc_g3 = acc_g0
    acc_u3 = acc_g0
    W, gs, gz, U, us, uz = _step_weights(g_ptrs, u_ptrs, gs_rows, us_rows, gz_rows, uz_rows, k_first, KW, col_ok,
                                         slot, GATED, WFMT, SFMT, GROUP_K, HAS_ZERO, WPS, EPW, EVEN, stride_sk)
    for kw in range(k_lo, k_hi, STEP_W):
        k_next = kw + STEP_W
        if EVEN_K:  # past the last step: the last step again (in bounds, unused)
            k_next = tl.minimum(k_next, k_last)
        nW, ngs, ngz, nU, nus, nuz = _step_weights(g_ptrs, u_ptrs, gs_rows, us_rows, gz_rows, uz_rows, k_next, KW,
                                                   col_ok, slot, GATED, WFMT, SFMT, GROUP_K, HAS_ZERO, WPS, EPW,
                                                   EVEN, stride_sk)
        a_ok = (kw + word) < KW
        a_offs = _operand_offsets(kw // WPS + slot, WPS, EPW)
        Wg, Wg8 = _shifted(W, WFMT)
        Wu, Wu8 = _shifted(U, WFMT)
        acc_g0, acc_u0 = _row_step(acc_g0, acc_u0, a_base + a_row0 * stride_am, a_offs, a_ok, Wg, Wg8, Wu, Wu8,
                                   gs, gz, us, uz, GATED, WFMT, GROUP_K, WPS, EPW, EVEN_K)
        if BLOCK_M >= 2:
            acc_g1, acc_u1 = _row_step(acc_g1, acc_u1, a_base + a_row1 * stride_am, a_offs, a_ok, Wg, Wg8, Wu, Wu8,
                                       gs, gz, us, uz, GATED, WFMT, GROUP_K, WPS, EPW, EVEN_K)
        if BLOCK_M == 4:
            acc_g2, acc_u2 = _row_step(acc_g2, acc_u2, a_base + a_row2 * stride_am, a_offs, a_ok, Wg, Wg8, Wu, Wu8,
                                       gs, gz, us, uz, GATED, WFMT, GROUP_K, WPS, EPW, EVEN_K)
            acc_g3, acc_u3 = _row_step(acc_g3, acc_u3, a_base + a_row3 * stride_am, a_offs, a_ok, Wg, Wg8, Wu, Wu8,
                                       gs, gz, us, uz, GATED, WFMT, GROUP_K, WPS, EPW, EVEN_K)
        W, gs, gz, U, us, uz = nW, ngs, ngz, nU, nus, nuz
    RESULT: tl.constexpr = E2M1_RESULT if WFMT == 3 else INT_RESULT
    return (tl.sum(acc_g0, 0) * RESULT, tl.sum(acc_u0, 0) * RESULT, tl.sum(acc_g1, 0) * RESULT,
            tl.sum(acc_u1, 0) * RESULT, tl.sum(acc_g2, 0) * RESULT, tl.sum(acc_u2, 0) * RESULT,
            tl.sum(acc_g3, 0) * RESULT, tl.sum(acc_u3, 0) * RESULT)


@triton.jit
def _program(NUM_BLOCKS_N, SPLIT: tl.constexpr):
    """This program's part of K, row block and column block (parts of one tile run side by side)."""
    pid_mn = tl.program_id(0) // SPLIT
    return tl.program_id(0) % SPLIT, pid_mn // NUM_BLOCKS_N, pid_mn % NUM_BLOCKS_N


@triton.jit
def _block_row(sorted_ptr, pid_m, M: tl.constexpr, BLOCK_M: tl.constexpr, num_pairs, IN_PLACE: tl.constexpr):
    """Row M of the block (row 0 again past the block): aligned row, pair, whether real. In place
    (align.pairs_in_place) block m holds pair m in its first row."""
    row = pid_m * BLOCK_M + (M if M < BLOCK_M else 0)
    if IN_PLACE:
        if M == 0 or M >= BLOCK_M:
            pair = pid_m
        else:
            pair = pid_m * 0 + num_pairs
    else:
        pair = tl.load(sorted_ptr + row)
    return row.to(tl.int64), pair, pair < num_pairs


@triton.jit
def _token(sorted_ptr, pid_m, M: tl.constexpr, BLOCK_M: tl.constexpr, num_pairs, top_k, IN_PLACE: tl.constexpr):
    """Row M's token, or token 0 for a padding row (never stored by gemm2): no masks on the
    activations."""
    _row, pair, real = _block_row(sorted_ptr, pid_m, M, BLOCK_M, num_pairs, IN_PLACE)
    return tl.where(real, pair // top_k, 0).to(tl.int64)


@triton.jit
def _store_operand(out_ptr, row, h, cols, col_ok, stride_om, OUT_WFMT: tl.constexpr, OUT_EPW: tl.constexpr,
                   OUT_WPS: tl.constexpr, OUT_MMA_ORDER: tl.constexpr):
    pos, j = _operand_position(cols, OUT_EPW, OUT_WPS, OUT_MMA_ORDER)
    tl.store(out_ptr + row * stride_om + pos, h * _position_factor(j, OUT_WFMT), mask=col_ok)


@triton.jit
def _row_factor(s_base, gs_ptr, rows, col_ok, stride_sn, SFMT: tl.constexpr, GROUP_K: tl.constexpr,
                HAS_GLOBAL: tl.constexpr):
    """What the main loop leaves to each output row: a scale spanning K, the nvfp4 global scale."""
    f = tl.full(rows.shape, 1.0, tl.float32)
    if GROUP_K == 0:
        f = f * _group_scales(s_base + rows * stride_sn, col_ok, SFMT, False)
    if HAS_GLOBAL:
        f = f * tl.load(gs_ptr)
    return f


@triton.jit
def _gemv_gemm1(
    a_ptr, w_ptr, ws_ptr, wz_ptr, wgs_ptr, bias_ptr, out_ptr,
    sorted_ptr, block_expert_ptr, num_rows_ptr,
    num_pairs, top_k, num_experts, K, I, NUM_BLOCKS_N,
    stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_sk, stride_be, stride_bn, stride_om,
    alpha, limit,
    ACT: tl.constexpr, GATED: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_BIAS: tl.constexpr,
    WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr,
    HAS_GLOBAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, G: tl.constexpr, WPS: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, SPLIT: tl.constexpr, IN_PLACE: tl.constexpr,
    MMA_ORDER: tl.constexpr,
):
    """gate/up GEMV of one block of rows (tokens' operand rows) and BLOCK_N output columns, the
    activation, and gemm2's operand written for the block's aligned rows. With SPLIT > 1 each
    program takes a part of K and writes its partial gate/up sums (part[split, row, gate|up, col],
    fp32) for _gemv_gemm1_finish."""
    split, pid_m, pid_n = _program(NUM_BLOCKS_N, SPLIT)
    expert = _block_expert(block_expert_ptr, num_rows_ptr, pid_m, num_experts, BLOCK_M, IN_PLACE)
    if expert < 0:
        return
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < I
    gate_rows, up_rows = gate_up_rows(cols, I, INTERLEAVED)
    g0, u0, g1, u1, g2, u2, g3, u3 = gemv_mainloop(
        a_ptr, _token(sorted_ptr, pid_m, 0, BLOCK_M, num_pairs, top_k, IN_PLACE),
        _token(sorted_ptr, pid_m, 1, BLOCK_M, num_pairs, top_k, IN_PLACE),
        _token(sorted_ptr, pid_m, 2, BLOCK_M, num_pairs, top_k, IN_PLACE),
        _token(sorted_ptr, pid_m, 3, BLOCK_M, num_pairs, top_k, IN_PLACE), stride_am, K, split,
        w_ptr + expert * stride_we, ws_ptr + expert * stride_se, wz_ptr + expert * stride_se, gate_rows, up_rows,
        col_ok, stride_wn, stride_sn, stride_sk, SPLIT, GATED, WFMT, SFMT, GROUP_K, HAS_ZERO, BLOCK_M, G, WPS, EVEN_K,
        EVEN_N)
    row0 = (pid_m * BLOCK_M).to(tl.int64)
    if SPLIT > 1:  # part[split] holds [rows, gate|up, I]; rows = the grid's row blocks * BLOCK_M
        part = out_ptr + split.to(tl.int64) * (tl.num_programs(0) // SPLIT // NUM_BLOCKS_N * BLOCK_M) * 2 * I
        _store_part(part, row0, g0, u0, cols, col_ok, I)
        if BLOCK_M >= 2:
            _store_part(part, row0 + 1, g1, u1, cols, col_ok, I)
        if BLOCK_M == 4:
            _store_part(part, row0 + 2, g2, u2, cols, col_ok, I)
            _store_part(part, row0 + 3, g3, u3, cols, col_ok, I)
    else:
        _gemm1_epilogue(out_ptr, ws_ptr, wgs_ptr, bias_ptr, expert, row0, g0, u0, g1, u1, g2, u2, g3, u3, cols,
                        col_ok, gate_rows, up_rows, stride_se, stride_sn, stride_be, stride_bn, stride_om, alpha,
                        limit, ACT, HAS_BIAS, WFMT, SFMT, GROUP_K, HAS_GLOBAL, BLOCK_M, WPS, MMA_ORDER)


@triton.jit
def _store_part(part, row, g, u, cols, col_ok, I):
    tl.store(part + (row * 2) * I + cols, g, mask=col_ok)
    tl.store(part + (row * 2 + 1) * I + cols, u, mask=col_ok)


@triton.jit
def _summed_parts(part_ptr, ROWS, row, I, cols, col_ok, SPLIT: tl.constexpr):
    """A row's gate and up summed over the parts of K, in order (deterministic)."""
    g = tl.zeros(cols.shape, dtype=tl.float32)
    u = g
    for split in tl.static_range(SPLIT):
        part = part_ptr + split * ROWS * 2 * I
        g += tl.load(part + (row * 2) * I + cols, mask=col_ok, other=0.0)
        u += tl.load(part + (row * 2 + 1) * I + cols, mask=col_ok, other=0.0)
    return g, u


@triton.jit
def _gemv_gemm1_finish(part_ptr, ws_ptr, wgs_ptr, bias_ptr, out_ptr, block_expert_ptr, num_rows_ptr,
                       num_experts, I, ROWS, NUM_BLOCKS_N, stride_se, stride_sn, stride_be, stride_bn, stride_om,
                       alpha, limit,
                       ACT: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_BIAS: tl.constexpr, WFMT: tl.constexpr,
                       SFMT: tl.constexpr, GROUP_K: tl.constexpr, HAS_GLOBAL: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, WPS: tl.constexpr, SPLIT: tl.constexpr, IN_PLACE: tl.constexpr,
                       MMA_ORDER: tl.constexpr):
    """gemm1's epilogue after a split K: the parts summed, then as unsplit."""
    pid_m = tl.program_id(0) // NUM_BLOCKS_N
    pid_n = tl.program_id(0) % NUM_BLOCKS_N
    expert = _block_expert(block_expert_ptr, num_rows_ptr, pid_m, num_experts, BLOCK_M, IN_PLACE)
    if expert < 0:
        return
    row0 = (pid_m * BLOCK_M).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < I
    gate_rows, up_rows = gate_up_rows(cols, I, INTERLEAVED)
    g0, u0 = _summed_parts(part_ptr, ROWS, row0, I, cols, col_ok, SPLIT)
    g1, u1 = g0, u0
    g2, u2 = g0, u0
    g3, u3 = g0, u0
    if BLOCK_M >= 2:
        g1, u1 = _summed_parts(part_ptr, ROWS, row0 + 1, I, cols, col_ok, SPLIT)
    if BLOCK_M == 4:
        g2, u2 = _summed_parts(part_ptr, ROWS, row0 + 2, I, cols, col_ok, SPLIT)
        g3, u3 = _summed_parts(part_ptr, ROWS, row0 + 3, I, cols, col_ok, SPLIT)
    _gemm1_epilogue(out_ptr, ws_ptr, wgs_ptr, bias_ptr, expert, row0, g0, u0, g1, u1, g2, u2, g3, u3, cols, col_ok,
                    gate_rows, up_rows, stride_se, stride_sn, stride_be, stride_bn, stride_om, alpha, limit,
                    ACT, HAS_BIAS, WFMT, SFMT, GROUP_K, HAS_GLOBAL, BLOCK_M, WPS, MMA_ORDER)


@triton.jit
def _gemm1_epilogue(out_ptr, ws_ptr, wgs_ptr, bias_ptr, expert, row0, g0, u0, g1, u1, g2, u2, g3, u3, cols, col_ok,
                    gate_rows, up_rows, stride_se, stride_sn, stride_be, stride_bn, stride_om, alpha, limit,
                    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr,
                    GROUP_K: tl.constexpr, HAS_GLOBAL: tl.constexpr, BLOCK_M: tl.constexpr, WPS: tl.constexpr,
                    MMA_ORDER: tl.constexpr):
    """Per-row factors, biases and the activation of the block's rows (row0 on), written as gemm2's
    operand (for codes in MMA order: MMA_ORDER, w2's order, the same as w13's)."""
    s_base = ws_ptr + expert * stride_se
    gf = _row_factor(s_base, wgs_ptr + expert, gate_rows, col_ok, stride_sn, SFMT, GROUP_K, HAS_GLOBAL)
    uf = _row_factor(s_base, wgs_ptr + expert, up_rows, col_ok, stride_sn, SFMT, GROUP_K, HAS_GLOBAL)
    if HAS_BIAS:
        b_base = bias_ptr + expert * stride_be
        gb = tl.load(b_base + gate_rows * stride_bn, mask=col_ok, other=0.0).to(tl.float32)
        ub = tl.load(b_base + up_rows * stride_bn, mask=col_ok, other=0.0).to(tl.float32)
    else:
        gb = tl.zeros_like(gf)
        ub = gb
    EPW: tl.constexpr = 8 if WFMT >= 2 else 4
    _store_operand(out_ptr, row0, _activate(g0 * gf + gb, u0 * uf + ub, alpha, limit, ACT), cols, col_ok, stride_om,
                   WFMT, EPW, WPS, MMA_ORDER)
    if BLOCK_M >= 2:
        _store_operand(out_ptr, row0 + 1, _activate(g1 * gf + gb, u1 * uf + ub, alpha, limit, ACT), cols, col_ok,
                       stride_om, WFMT, EPW, WPS, MMA_ORDER)
    if BLOCK_M == 4:
        _store_operand(out_ptr, row0 + 2, _activate(g2 * gf + gb, u2 * uf + ub, alpha, limit, ACT), cols, col_ok,
                       stride_om, WFMT, EPW, WPS, MMA_ORDER)
        _store_operand(out_ptr, row0 + 3, _activate(g3 * gf + gb, u3 * uf + ub, alpha, limit, ACT), cols, col_ok,
                       stride_om, WFMT, EPW, WPS, MMA_ORDER)


@triton.jit
def _gemv_gemm2(
    a_ptr, w_ptr, ws_ptr, wz_ptr, wgs_ptr, bias_ptr, weight_ptr, out_ptr,
    sorted_ptr, block_expert_ptr, num_rows_ptr,
    num_pairs, num_experts, N, K, NUM_BLOCKS_N,
    stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_sk, stride_be, stride_bn, stride_om,
    HAS_BIAS: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr,
    HAS_GLOBAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, G: tl.constexpr, WPS: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, SPLIT: tl.constexpr, IN_PLACE: tl.constexpr,
):
    """The activated operand rows of one block @ BLOCK_N rows of w2, the bias and the routing weight,
    written per pair: at row pair * SPLIT + split of out (fp32) with SPLIT > 1 (the bias in part 0),
    the pairs' parts then summed with the top-k slots by _sum_over_topk."""
    split, pid_m, pid_n = _program(NUM_BLOCKS_N, SPLIT)
    expert = _block_expert(block_expert_ptr, num_rows_ptr, pid_m, num_experts, BLOCK_M, IN_PLACE)
    if expert < 0:
        return
    row0 = (pid_m * BLOCK_M).to(tl.int64)  # (the operand is stored by aligned row: padding rows finite)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    s_base = ws_ptr + expert * stride_se
    y0, _0, y1, _1, y2, _2, y3, _3 = gemv_mainloop(
        a_ptr, row0, row0 + (1 if BLOCK_M >= 2 else 0), row0 + (2 if BLOCK_M == 4 else 0),
        row0 + (3 if BLOCK_M == 4 else 0), stride_am, K, split, w_ptr + expert * stride_we, s_base,
        wz_ptr + expert * stride_se, cols, cols, col_ok, stride_wn, stride_sn, stride_sk, SPLIT, False, WFMT, SFMT,
        GROUP_K, HAS_ZERO, BLOCK_M, G, WPS, EVEN_K, EVEN_N)
    f = _row_factor(s_base, wgs_ptr + expert, cols, col_ok, stride_sn, SFMT, GROUP_K, HAS_GLOBAL)
    if HAS_BIAS and split == 0:
        bias = tl.load(bias_ptr + expert * stride_be + cols * stride_bn, mask=col_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros_like(f)
    _store_pair(out_ptr, weight_ptr, sorted_ptr, pid_m, 0, BLOCK_M, num_pairs, y0 * f + bias, cols, col_ok,
                stride_om, SPLIT, split, IN_PLACE)
    if BLOCK_M >= 2:
        _store_pair(out_ptr, weight_ptr, sorted_ptr, pid_m, 1, BLOCK_M, num_pairs, y1 * f + bias, cols, col_ok,
                    stride_om, SPLIT, split, IN_PLACE)
    if BLOCK_M == 4:
        _store_pair(out_ptr, weight_ptr, sorted_ptr, pid_m, 2, BLOCK_M, num_pairs, y2 * f + bias, cols, col_ok,
                    stride_om, SPLIT, split, IN_PLACE)
        _store_pair(out_ptr, weight_ptr, sorted_ptr, pid_m, 3, BLOCK_M, num_pairs, y3 * f + bias, cols, col_ok,
                    stride_om, SPLIT, split, IN_PLACE)


@triton.jit
def _store_pair(out_ptr, weight_ptr, sorted_ptr, pid_m, M: tl.constexpr, BLOCK_M: tl.constexpr, num_pairs, y, cols,
                col_ok, stride_om, SPLIT: tl.constexpr, split, IN_PLACE: tl.constexpr):
    """Row M's pair (if real) times its routing weight, or its part ``split`` of K (masks as tensors:
    the interpreter refuses scalars)."""
    _row, pair, real = _block_row(sorted_ptr, pid_m, M, BLOCK_M, num_pairs, IN_PLACE)
    ok = col_ok & ((cols * 0 + real.to(tl.int32)) > 0)
    w = tl.load(weight_ptr + pair + cols * 0, mask=ok, other=0.0)
    row = pair.to(tl.int64) * SPLIT + split
    tl.store(out_ptr + row * stride_om + cols, (y * w).to(out_ptr.dtype.element_ty), mask=ok)


def _matrix_args(m: QuantizedMatrix):
    """Word view of the codes, scales (e4m3 as bytes), zero points sharing the scales' strides
    (absent: the scales, never read), global scale (absent: the scales)."""
    words = _word_view(m.data)
    scale = kernel_scales(m)
    zero = m.zero.contiguous() if m.zero is not None else scale
    gscale = m.global_scale if m.global_scale is not None else scale
    return words, scale, zero, gscale


def _constexprs(spec: QuantSpec, m: QuantizedMatrix, block_m: int, block_n: int, block_k: int, n: int,
                k: int) -> dict:
    """``block_k``: codes per step, a power of two (at least one slot); ``n`` x ``k``: the GEMM."""
    wps = words_per_slot(spec, m.mma_order)
    slot = codes_per_word(spec.weight) * wps
    g = max(1, block_k // slot)
    return dict(WFMT=_WFMT[spec.weight], SFMT={"fp32": 0, "e8m0": 1, "e4m3": 2}[spec.scale_format.value],
                GROUP_K=spec.group_k, HAS_ZERO=m.zero is not None, HAS_GLOBAL=m.global_scale is not None,
                BLOCK_M=block_m, BLOCK_N=block_n, G=g, WPS=wps, EVEN_K=k % (g * slot) == 0, EVEN_N=n % block_n == 0)


def launch_gemv_gemm1(x, w13: QuantizedMatrix, w13_bias, aligned, top_k: int, activation, interleaved: bool,
                      g, spec: QuantSpec, w2_mma_order: bool = False) -> GemvOperand:
    """gemm1 for decode-sized blocks (block_m 1 or 2): x [T, H] -> gemm2's operand [rows, I]. ``g``:
    the GemmTiles (block_n rows of w13 per program, block_k codes per step, split_k parts of K)."""
    if w13.mma_order != w2_mma_order:
        raise ValueError("the decode GEMV writes gemm2's operand in w13's code order: w13 and w2 must share it "
                         "(quant/code_order.py)")
    op = prepare_operand(x, spec, w13.mma_order)
    rows, block_m = aligned.rows, aligned.block_m
    hidden = x.shape[1]
    inter = w13.data.shape[1] // 2 if activation.gated else w13.data.shape[1]
    out = torch.empty(rows, operand_columns(spec, inter, w13.mma_order), dtype=torch.float32, device=x.device)
    words, scale, zero, gscale = _matrix_args(w13)
    bias = w13_bias if w13_bias is not None else scale
    blocks_n = cdiv(inter, g.block_n)
    split = g.split_k
    part = torch.empty(split, rows, 2, inter, dtype=torch.float32, device=x.device) if split > 1 else out
    strides = (scale.stride(0), scale.stride(1), scale.stride(2), bias.stride(0), bias.stride(-1), out.stride(0))
    epilogue = dict(ACT=ACT_CODE[activation.kind], INTERLEAVED=interleaved, HAS_BIAS=w13_bias is not None)
    ce = _constexprs(spec, w13, block_m, g.block_n, g.block_k, inter, hidden)
    launch(_gemv_gemm1, (rows // block_m * blocks_n * split,),
           (op.values, words, scale, zero, gscale, bias, part, aligned.sorted_pairs, aligned.block_expert,
            aligned.num_rows, x.shape[0] * top_k, top_k, w13.data.shape[0], hidden, inter, blocks_n,
            op.values.stride(0), words.stride(0), words.stride(1), *strides, activation.alpha, activation.limit),
           dict(**epilogue, GATED=activation.gated, **ce, SPLIT=split, IN_PLACE=aligned.in_place,
                MMA_ORDER=w13.mma_order), g.num_warps, 1)
    if split > 1:
        launch(_gemv_gemm1_finish, (rows // block_m * blocks_n,),
               (part, scale, gscale, bias, out, aligned.block_expert, aligned.num_rows, w13.data.shape[0], inter, rows,
                blocks_n,
                strides[0], strides[1], *strides[3:], activation.alpha, activation.limit),
               dict(**epilogue, WFMT=ce["WFMT"], SFMT=ce["SFMT"], GROUP_K=ce["GROUP_K"], HAS_GLOBAL=ce["HAS_GLOBAL"],
                    BLOCK_M=block_m, BLOCK_N=g.block_n, WPS=ce["WPS"], SPLIT=split, IN_PLACE=aligned.in_place,
                    MMA_ORDER=w13.mma_order), 4, 1)
    return GemvOperand(out, inter, w13.mma_order)


def launch_gemv_gemm2(op: GemvOperand, w2: QuantizedMatrix, w2_bias, topk_weights, aligned, out_rows, g,
                      spec: QuantSpec):
    """gemm2 for decode-sized blocks: gemm1's operand @ w2 -> out_rows[pair] (routing weight applied);
    with g.split_k > 1, out_rows (fp32) has split_k rows per pair, one per part of K
    (experts_kernels.fused_experts sums them with the top-k slots)."""
    if op.mma_order != w2.mma_order:
        raise ValueError("gemm2's operand was laid out for another code order than w2's (quant/code_order.py)")
    rows, block_m = aligned.rows, aligned.block_m
    hidden = w2.data.shape[1]
    words, scale, zero, gscale = _matrix_args(w2)
    bias = w2_bias if w2_bias is not None else scale
    blocks_n = cdiv(hidden, g.block_n)
    launch(_gemv_gemm2, (rows // block_m * blocks_n * g.split_k,),
           (op.values, words, scale, zero, gscale, bias, topk_weights.reshape(-1), out_rows, aligned.sorted_pairs,
            aligned.block_expert, aligned.num_rows, topk_weights.numel(), w2.data.shape[0], hidden, op.k, blocks_n,
            op.values.stride(0), words.stride(0), words.stride(1), scale.stride(0), scale.stride(1), scale.stride(2),
            bias.stride(0), bias.stride(-1), out_rows.stride(0)),
           dict(HAS_BIAS=w2_bias is not None, **_constexprs(spec, w2, block_m, g.block_n, g.block_k, hidden, op.k),
                SPLIT=g.split_k, IN_PLACE=aligned.in_place),
           g.num_warps, 1)
    return out_rows


# The GEMV reads an expert's weights once per row (block_m 1): it wins while experts get about one
# row each (H200, 4 shapes: 1.3-2.3x the tensor-core loop at 1 and 16 tokens; at Mixtral-8x7B's 4
# rows per expert at 16 tokens the tensor-core loop is as fast).
GEMV_MAX_ROWS_PER_EXPERT = 1.0
GEMV_TARGET_PROGRAMS = 1024  # below this gemm2 splits K (H200: 132 SMs, ~8 programs of 4 warps each)


def decode_gemv_tiles(spec: QuantSpec, num_experts: int, top_k: int, hidden: int, inter: int, num_tokens: int):
    """Default tiles of the decode GEMV for this problem, or None where it does not apply: gemm1 16
    rows of w13 per program (2 per thread; 32 was 0-6% slower at the four shapes, and 255
    registers where K is masked), gemm2 32 (4 per thread); steps of 256 bytes of each row
    (_step_codes); gemm2's K split in parts of at least 4 steps while fewer than GEMV_TARGET_PROGRAMS
    programs would run (Mixtral-8x7B at 1 token: 4 parts); weights
    double-buffered in registers (num_stages 1: Triton's cp.async pipeline measured 1.5-3x slower).
    From H200 sweeps over the four benchmark shapes."""
    from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles

    if not gemv_supports_scheme(spec, hidden, inter) or num_tokens * top_k > num_experts * GEMV_MAX_ROWS_PER_EXPERT:
        return None
    blocks = min(num_experts, num_tokens * top_k)
    step1, step2 = _step_codes(hidden, spec.weight), _step_codes(inter, spec.weight)
    programs = blocks * cdiv(hidden, 32)
    split = 1
    while programs * split < GEMV_TARGET_PROGRAMS and cdiv(inter, step2) // (2 * split) >= 4:
        split *= 2
    return ExpertsTiles(1, GemmTiles(16, step1, 1, 4, 1), GemmTiles(32, step2, 1, 4, 1, split_k=split))


def _step_codes(k: int, weight: WeightFormat) -> int:
    """Codes per step: 256 bytes of a row. int8 steps of 512 codes (the 4-bit step) took 154-162
    registers and ran 1.1-1.4x slower than steps of 256 (H200, four shapes, 1 and 16 tokens)."""
    step = 512 if weight.packed else 256
    return step // 2 if k % step and not k % (step // 2) else step
