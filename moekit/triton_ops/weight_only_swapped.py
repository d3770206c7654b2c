"""The K loop of the weight-only tensor-core GEMMs with the operands swapped: out^T = W @ x^T.

Why (sm90, read from the compiled kernels): Hopper's wgmma takes its A operand from registers but
its B operand only from shared memory. With the weights as B (weight_only_loop.py) every
dequantized tile goes registers -> shared memory -> tensor cores, and Triton's pipeliner does not
stream a load that reaches a dot through arithmetic: the codes came in by synchronous loads, and
prefill ran at 0.2-0.5x the bf16 forward. With the weights as A:

- the codes and scales stream into shared memory by asynchronous copies (the pipeliner reads
  shared -> registers in the dot's operand layout, then the dequantization runs in registers);
- the dequantized tile feeds wgmma from registers: no store back to shared memory;
- the two nibbles of a byte are neighbouring K columns, and a thread's A-operand registers hold
  pairs of neighbouring K columns: joining the low and high nibble values and merging that pair
  into K costs no data movement;
- the activations (the B operand, x^T) stream in by asynchronous copies as for bf16.

A K step stays within one scale group (quant_gemm.quant_block_k): one scale and zero point per
weight row. One-byte group scales (mxfp4, nvfp4) are read as words of four groups, and a step then
dequantizes the four group tiles, each with its byte as the rows' scale, and puts them side by side
into one operand: one dot per accumulator and step, which Triton keeps in flight while the next
step dequantizes (sm90 PTX: wgmma.wait_group 15, where four chained one-group dots waited for each
dot). Dequantization: with bf16/fp16 activations, in 16-bit pairs by inline PTX
(paired_dequant.py: uint4 and int8, e2m1 with bf16); otherwise per element the code's bits made an
fp32 (quant_formats), minus the zero point (integer formats), times the group scale, then half a
conversion. A scale spanning K (per channel) and the nvfp4 global scale stay in the epilogue. The
accumulators come out as [BLOCK_M, BLOCK_N], as weight_only_loop.weight_only_mainloop's, so the
kernels' epilogues do not change.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moekit.triton_ops.paired_dequant import (E2M1_WORD_BF16_FOLDED, PAIRED_OFF, PAIRED_PTX, e2m1_operands,
                                               paired_e2m1, paired_e2m1_words, paired_int8, paired_uint4,
                                               paired_uint4_words, split_pairs, word_ptx)
from moekit.triton_ops.quant_formats import E2M1_UNBIAS
from moekit.triton_ops.weight_only_loop import (activation_tiles, code_bits, code_offsets, scale_values,
                                               step_scales)


@triton.jit
def _load_rows(ptrs, row_ok, first, stored_k, stride_k, HALF: tl.constexpr, EVEN_K: tl.constexpr):
    """The stored [BLOCK_N, HALF] codes (bytes for packed formats) from stored column ``first``, as
    stored; ``ptrs`` point at column 0 of the tile's rows."""
    if EVEN_K:
        return tl.load(ptrs + first * stride_k, mask=row_ok[:, None], other=0)
    else:
        kk = first + tl.arange(0, HALF)
        return tl.load(ptrs + first * stride_k, mask=row_ok[:, None] & (kk < stored_k)[None, :], other=0)


@triton.jit
def _runs_in_plain_order(x):
    """[rows, HALF] values in the byte order of quant/code_order.py's runs (value 4q + 2c + h of a run
    belongs to plain byte 8c + 4h + q) -> plain order, by a reshape and a permute that cost no
    instruction (a thread's four values of a run are one word of the stored tile)."""
    rows: tl.constexpr = x.shape[0]
    half: tl.constexpr = x.shape[1]
    runs = tl.reshape(x, (rows, half // 16, 4, 2, 2))  # [rows, run, q, c, h]
    return tl.reshape(tl.permute(runs, (0, 1, 3, 4, 2)), (rows, half))  # [rows, run, c, h, q]


@triton.jit
def _word_pairs_as_bytes(stored):
    """[rows, HALF] bytes in MMA order (quant/code_order.py: byte 2i of a word holds the low codes of
    pairs 2i and 2i + 1, byte 2i + 1 their high codes) -> [rows, HALF] bytes, byte j of each word
    holding pair j as a plain byte (low code in the low nibble). For the routes that dequantize
    plain bytes (the fp32 route, the interpreter)."""
    rows: tl.constexpr = stored.shape[0]
    half: tl.constexpr = stored.shape[1]
    b = stored.to(tl.int32) & 0xFF
    low_codes, high_codes = tl.split(tl.reshape(b, (rows, half // 2, 2)))
    even = (low_codes & 0xF) | ((high_codes & 0xF) << 4)  # pairs 0 and 2 of the word
    odd = (low_codes >> 4) | (high_codes & 0xF0)  # pairs 1 and 3
    return tl.reshape(tl.join(even, odd), (rows, half)).to(stored.dtype)


@triton.jit
def _stored_rows(ptrs, row_ok, first, stored_k, stride_k, HALF: tl.constexpr, EVEN_K: tl.constexpr,
                 MMA_ORDER: tl.constexpr = False):
    """The stored [BLOCK_N, HALF] codes (bytes for packed formats) from stored column ``first``, in
    plain order; ``ptrs`` point at column 0 of the tile's rows. MMA_ORDER: packed codes stored in
    quant/code_order.py's order, put back in plain order."""
    stored = _load_rows(ptrs, row_ok, first, stored_k, stride_k, HALF, EVEN_K)
    if MMA_ORDER:
        stored = _runs_in_plain_order(_word_pairs_as_bytes(stored))
    return stored


@triton.jit
def _dequantized_rows(stored, s, z, HIGH: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr,
                      GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr):
    """fp32 [BLOCK_N, HALF] values of stored codes (the high nibbles with HIGH), all in one scale group
    (per row: ``s``, ``z``)."""
    v = code_bits(stored, HIGH, WFMT)
    if WFMT != 3:
        if HAS_ZERO:
            v = v - code_offsets(z, WFMT, HAS_ZERO)[:, None]
        else:
            v = v - code_offsets(z, WFMT, HAS_ZERO)
    if GROUP_K > 0:
        v = v * scale_values(s, WFMT, SFMT)[:, None]
    elif WFMT == 3:
        v = v * E2M1_UNBIAS
    return v


@triton.jit
def _side_by_side(left, right):
    """[rows, C] and [rows, C] -> [rows, 2C]: ``left``'s columns, then ``right``'s. (A join, a
    transpose and a reshape: Triton moves no data for it.)"""
    return tl.reshape(tl.permute(tl.join(left, right), (0, 2, 1)), (left.shape[0], 2 * left.shape[1]))


@triton.jit
def _packed_values(stored, s, z, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr,
                   HAS_ZERO: tl.constexpr, PAIRED: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Plain-order bytes [rows, HALF] of 4-bit codes (byte j: columns 2j, low nibble, and 2j + 1)
    and the rows' scale ``s`` (zero point ``z``) -> [rows, 2 * HALF] values."""
    if PAIRED != PAIRED_OFF and WFMT == 2:
        lo, hi = paired_uint4(stored, s, z, HAS_ZERO, GROUP_K > 0, SFMT, PAIRED, DOT_DTYPE)
    elif PAIRED != PAIRED_OFF:
        lo, hi = paired_e2m1(stored, s, SFMT, PAIRED, DOT_DTYPE)
    else:
        lo = _dequantized_rows(stored, s, z, False, WFMT, SFMT, GROUP_K, HAS_ZERO)
        hi = _dequantized_rows(stored, s, z, True, WFMT, SFMT, GROUP_K, HAS_ZERO)
    return tl.reshape(tl.join(lo, hi), (stored.shape[0], 2 * stored.shape[1]))


@triton.constexpr_function
def two_group_steps(wfmt, group_k, mma_order, scale_words):
    """Whether a scale-word step reads nvfp4 codes in MMA order, whose 16-byte runs each span two
    16-code groups (quant/code_order.py): the step's 32 bytes a row at once (_two_group_operand)."""
    return wfmt == 3 and group_k == 16 and bool(mma_order) and bool(scale_words)


@triton.jit
def two_group_scales(s_word, HALF: tl.constexpr, SFMT: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """[rows] scale words (four groups' bytes) -> [rows, HALF] folded scale pairs (e2m1_operands),
    one per stored byte of a step's two-group runs in MMA order: byte c is pair c % 4 of its word,
    of the run's first group for pairs 0, 1, so of group 2 * (c // 16) + (c // 2) % 2."""
    rows: tl.constexpr = s_word.shape[0]
    col = tl.arange(0, HALF)[None, :]
    group = 2 * (col // 16) + (col // 2) % 2
    p0 = e2m1_operands(rows, s_word & 0xFF, SFMT, DOT_DTYPE, True)[1]
    p1 = e2m1_operands(rows, (s_word >> 8) & 0xFF, SFMT, DOT_DTYPE, True)[1]
    p2 = e2m1_operands(rows, (s_word >> 16) & 0xFF, SFMT, DOT_DTYPE, True)[1]
    p3 = e2m1_operands(rows, (s_word >> 24) & 0xFF, SFMT, DOT_DTYPE, True)[1]
    return tl.where(group == 0, p0, tl.where(group == 1, p1, tl.where(group == 2, p2, p3)))


@triton.jit
def _two_group_operand(w_ptrs, s_word, row_ok, k0, K, stride_wk, SFMT: tl.constexpr, PAIRED: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The [BLOCK_N, 4 * BLOCK_K] operand of a scale-word step of nvfp4 codes in MMA order: two runs
    of 16 bytes a row, each holding two groups. With the PTX, one call a word, each pair scaled by
    its own group's pair (the word PTX takes a scale per byte: pairs 0, 1 of a word are the run's
    first group, 2, 3 its second; the group of a byte column is known per register at compile time);
    else the bytes back in plain order and dequantized group by group."""
    HALF: tl.constexpr = 2 * BLOCK_K  # the step's bytes per row: four groups of BLOCK_K codes
    if PAIRED >= PAIRED_PTX:
        stored = _load_rows(w_ptrs, row_ok, k0 // 2, K // 2, stride_wk, HALF, True)
        scale = two_group_scales(s_word, HALF, SFMT, DOT_DTYPE)
        pairs = word_ptx(E2M1_WORD_BF16_FOLDED, stored, scale, scale)
        lo, hi = split_pairs(_runs_in_plain_order(pairs), DOT_DTYPE)
        return tl.reshape(tl.join(lo, hi), (BLOCK_N, 4 * BLOCK_K))
    else:
        stored = _stored_rows(w_ptrs, row_ok, k0 // 2, K // 2, stride_wk, HALF, True, True)
        # [rows, group, byte] -> [rows, byte, i, j] with group 2i + j, then split twice
        by_group = tl.reshape(tl.permute(tl.reshape(stored, (BLOCK_N, 4, BLOCK_K // 2)), (0, 2, 1)),
                              (BLOCK_N, BLOCK_K // 2, 2, 2))
        even, odd = tl.split(by_group)
        g0, g2 = tl.split(even)
        g1, g3 = tl.split(odd)
        # (two_group_steps: e2m1 codes, 16-code groups, no zero points)
        w0 = _packed_values(g0, s_word & 0xFF, s_word, 3, SFMT, 16, False, PAIRED, DOT_DTYPE)
        w1 = _packed_values(g1, (s_word >> 8) & 0xFF, s_word, 3, SFMT, 16, False, PAIRED, DOT_DTYPE)
        w2 = _packed_values(g2, (s_word >> 16) & 0xFF, s_word, 3, SFMT, 16, False, PAIRED, DOT_DTYPE)
        w3 = _packed_values(g3, (s_word >> 24) & 0xFF, s_word, 3, SFMT, 16, False, PAIRED, DOT_DTYPE)
        return _side_by_side(_side_by_side(w0, w1), _side_by_side(w2, w3)).to(DOT_DTYPE)


@triton.jit
def _weight_operand(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0, K, stride_wk, stride_sn, stride_sk,
                    WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr,
                    SCALE_WORDS: tl.constexpr, PAIRED: tl.constexpr, SUB: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, DOT_DTYPE: tl.constexpr, MMA_ORDER: tl.constexpr):
    """The [BLOCK_N, BLOCK_K] dequantized weight rows of the K step at k0, in DOT_DTYPE: within one
    scale group (quant_gemm.quant_block_k), or with SCALE_WORDS four groups scaled by the bytes of
    the rows' scale words ``s_word``. PAIRED: bytes of 4-bit codes, or two int8 codes, become their
    two values in half-precision pairs (paired_dequant.py)."""
    if SCALE_WORDS:  # byte SUB of the word of four groups loaded by the caller
        s = (s_word >> (8 * SUB)) & 0xFF
        z = s
    else:
        s, _s1, z, _z1 = step_scales(s_base, z_base, rows, row_ok, k0, K, stride_sn, stride_sk, GROUP_K, HAS_ZERO,
                                     BLOCK_K)
    if WFMT >= 2 and MMA_ORDER and PAIRED >= PAIRED_PTX:  # whole words of the stored tile, then plain order
        stored = _load_rows(w_ptrs, row_ok, k0 // 2, K // 2, stride_wk, BLOCK_K // 2, EVEN_K)
        if WFMT == 2:
            pairs = paired_uint4_words(stored, s, z, HAS_ZERO, GROUP_K > 0, SFMT, DOT_DTYPE)
        else:
            pairs = paired_e2m1_words(stored, s, SFMT, PAIRED, DOT_DTYPE)
        lo, hi = split_pairs(_runs_in_plain_order(pairs), DOT_DTYPE)
        w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
    elif WFMT >= 2:
        stored = _stored_rows(w_ptrs, row_ok, k0 // 2, K // 2, stride_wk, BLOCK_K // 2, EVEN_K, MMA_ORDER)
        w = _packed_values(stored, s, z, WFMT, SFMT, GROUP_K, HAS_ZERO, PAIRED, DOT_DTYPE)
    else:
        stored = _stored_rows(w_ptrs, row_ok, k0, K, stride_wk, BLOCK_K, EVEN_K)
        if PAIRED != PAIRED_OFF and WFMT == 1:
            w = paired_int8(stored, s, z, HAS_ZERO, GROUP_K > 0, PAIRED, DOT_DTYPE)
        else:
            w = _dequantized_rows(stored, s, z, False, WFMT, SFMT, GROUP_K, HAS_ZERO)
    return w.to(DOT_DTYPE)


@triton.jit
def _group_pair(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0, K, stride_wk, stride_sn, stride_sk,
                WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr,
                PAIRED: tl.constexpr, FIRST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                DOT_DTYPE: tl.constexpr, MMA_ORDER: tl.constexpr):
    """Groups FIRST and FIRST + 1 of the step at k0 side by side, each scaled by its byte of the word."""
    left = _weight_operand(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0 + FIRST * BLOCK_K, K, stride_wk,
                           stride_sn, stride_sk, WFMT, SFMT, GROUP_K, HAS_ZERO, True, PAIRED, FIRST, BLOCK_N,
                           BLOCK_K, True, DOT_DTYPE, MMA_ORDER)
    right = _weight_operand(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0 + (FIRST + 1) * BLOCK_K, K,
                            stride_wk, stride_sn, stride_sk, WFMT, SFMT, GROUP_K, HAS_ZERO, True, PAIRED, FIRST + 1,
                            BLOCK_N, BLOCK_K, True, DOT_DTYPE, MMA_ORDER)
    return _side_by_side(left, right)


@triton.jit
def _step_operand(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0, K, stride_wk, stride_sn, stride_sk,
                  WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr,
                  SCALE_WORDS: tl.constexpr, PAIRED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr, DOT_DTYPE: tl.constexpr, MMA_ORDER: tl.constexpr):
    """The weight operand of a K step: one [BLOCK_N, BLOCK_K] tile, or with SCALE_WORDS the four
    groups of the rows' scale words side by side, [BLOCK_N, 4 * BLOCK_K], each dequantized with its
    byte of the word as a row's scale. (One operand, not four dots: Triton waited for each of four
    chained dots in a step, sm90 PTX wgmma.wait_group 0; a scale chosen per column by a shift
    made it dequantize in another layout and move the tile through shared memory.)"""
    if two_group_steps(WFMT, GROUP_K, MMA_ORDER, SCALE_WORDS):
        return _two_group_operand(w_ptrs, s_word, row_ok, k0, K, stride_wk, SFMT, PAIRED, BLOCK_N, BLOCK_K,
                                  DOT_DTYPE)
    elif SCALE_WORDS:
        first = _group_pair(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0, K, stride_wk, stride_sn, stride_sk,
                            WFMT, SFMT, GROUP_K, HAS_ZERO, PAIRED, 0, BLOCK_N, BLOCK_K, DOT_DTYPE, MMA_ORDER)
        second = _group_pair(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0, K, stride_wk, stride_sn, stride_sk,
                             WFMT, SFMT, GROUP_K, HAS_ZERO, PAIRED, 2, BLOCK_N, BLOCK_K, DOT_DTYPE, MMA_ORDER)
        return _side_by_side(first, second)
    else:
        return _weight_operand(w_ptrs, s_base, z_base, s_word, rows, row_ok, k0, K, stride_wk, stride_sn, stride_sk,
                               WFMT, SFMT, GROUP_K, HAS_ZERO, False, PAIRED, 0, BLOCK_N, BLOCK_K, EVEN_K, DOT_DTYPE,
                               MMA_ORDER)


@triton.jit
def _swapped_step(acc_g, acc_u, a_ptrs, a_row_ok, k0, K, g_ptrs, u_ptrs, s_base, z_base, g_word, u_word,
                  gate_rows, up_rows, col_ok, stride_wk, stride_sn, stride_sk,
                  GATED: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr,
                  HAS_ZERO: tl.constexpr, SCALE_WORDS: tl.constexpr, PAIRED: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr, MMA_ORDER: tl.constexpr, RETIRE: tl.constexpr):
    """One K step at k0 (BLOCK_K columns, four times that with SCALE_WORDS): the activations, the
    gate (and up) weight operands, their dots, each retired before the next operand is made
    (RETIRE, _retire_dots)."""
    STEP_K: tl.constexpr = 4 * BLOCK_K if SCALE_WORDS else BLOCK_K
    a, _same = activation_tiles(a_ptrs, a_row_ok, k0, K, False, BLOCK_M, STEP_K, EVEN_K or SCALE_WORDS)
    a_t = tl.trans(a)
    w = _step_operand(g_ptrs, s_base, z_base, g_word, gate_rows, col_ok, k0, K, stride_wk, stride_sn, stride_sk,
                      WFMT, SFMT, GROUP_K, HAS_ZERO, SCALE_WORDS, PAIRED, BLOCK_N, BLOCK_K, EVEN_K, a.dtype,
                      MMA_ORDER)
    acc_g = tl.dot(w, a_t, acc_g, input_precision=DOT_PRECISION)
    _retire_dots(k0, RETIRE)
    if GATED:
        u = _step_operand(u_ptrs, s_base, z_base, u_word, up_rows, col_ok, k0, K, stride_wk, stride_sn, stride_sk,
                          WFMT, SFMT, GROUP_K, HAS_ZERO, SCALE_WORDS, PAIRED, BLOCK_N, BLOCK_K, EVEN_K, a.dtype,
                          MMA_ORDER)
        acc_u = tl.dot(u, a_t, acc_u, input_precision=DOT_PRECISION)
        _retire_dots(k0, RETIRE)
    return acc_g, acc_u


@triton.jit
def _retire_dots(k0, RETIRE: tl.constexpr):
    """Wait until every wgmma issued so far has finished (PTX ``wgmma.wait_group 0``); called after
    each dot, before the next operand is dequantized into registers. Why: Triton 3.6 leaves dots in
    flight (``wait_group 7``) while the next operand is made, and ptxas 12.8 may reuse the in-flight
    wgmmas' A registers for it: undefined behaviour by the PTX ISA (triton-lang/triton#9433, fixed
    in ptxas 13.3), seen on the H200 as wrong, run-to-run different results and an illegal
    address. A wait at the top of each K step alone was not enough, and it left ptxas serializing
    every wgmma (a wait after each one: its note C7513, which ``moekit asm`` reports); with the wait
    after each dot, a dot's wgmmas run back to back. Dequantization and the tensor cores then
    overlap across the SM's other warpgroups and programs, not within one."""
    if RETIRE:
        tl.inline_asm_elementwise("wgmma.wait_group.sync.aligned 0;", "=r,r", [k0], dtype=tl.int32, is_pure=False,
                                  pack=1)


@triton.jit
def weight_only_swapped_mainloop(a_base, a_rows, a_row_ok, stride_am, K,
                                 w_base, s_base, z_base, gate_rows, up_rows, col_ok,
                                 stride_wn, stride_wk, stride_sn, stride_sk,
                                 GATED: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr,
                                 HAS_ZERO: tl.constexpr, SCALE_WORDS: tl.constexpr, PAIRED: tl.constexpr,
                                 DOT_PRECISION: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                 EVEN_K: tl.constexpr, MMA_ORDER: tl.constexpr = False,
                                 RETIRE_DOTS: tl.constexpr = False, WORD_TAIL: tl.constexpr = True):
    """weight_only_loop.weight_only_mainloop's contract (acc_gate, acc_up as fp32 [BLOCK_M, BLOCK_N];
    acc_up zeros when not GATED), computed as W @ x^T. SCALE_WORDS: one-byte scales (e8m0, e4m3) read
    as the aligned 32-bit word of four groups, which the pipeliner streams by asynchronous copies
    like the codes (a one-byte load it leaves synchronous: the loop waited on it every step); K past
    the last whole word (gpt-oss: 2880 = 22.5 words of 128) runs single steps with byte scales; with
    WORD_TAIL False (K a whole number of words) that loop is not built: ptxas serialized the main
    loop's wgmmas when it was there (its note C7513, moekit asm)."""
    PACKED: tl.constexpr = WFMT >= 2
    acc_g = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    # With SCALE_WORDS a step spans the four groups of one scale word (_step_operand).
    STEP_K: tl.constexpr = 4 * BLOCK_K if SCALE_WORDS else BLOCK_K
    a_ptrs = a_base + a_rows[:, None] * stride_am + tl.arange(0, STEP_K)[None, :]
    # (a two-group step reads the step's bytes at once: _two_group_operand)
    ROW_BYTES: tl.constexpr = STEP_K // 2 if two_group_steps(WFMT, GROUP_K, MMA_ORDER, SCALE_WORDS) else BLOCK_K // 2
    kq = tl.arange(0, ROW_BYTES if PACKED else BLOCK_K)[None, :] * stride_wk
    g_ptrs = w_base + gate_rows[:, None] * stride_wn + kq
    u_ptrs = w_base + up_rows[:, None] * stride_wn + kq
    k_words = K // STEP_K * STEP_K if SCALE_WORDS else K
    g_word = gate_rows
    u_word = up_rows
    for k0 in range(0, k_words, STEP_K):
        if SCALE_WORDS:
            word_col = (k0 // GROUP_K) * stride_sk  # a multiple of four groups: an aligned word
            g_word = tl.load((s_base + gate_rows * stride_sn + word_col).to(tl.pointer_type(tl.int32), bitcast=True),
                             mask=col_ok, other=0)
            if GATED:
                u_word = tl.load((s_base + up_rows * stride_sn + word_col).to(tl.pointer_type(tl.int32),
                                                                              bitcast=True), mask=col_ok, other=0)
        acc_g, acc_u = _swapped_step(acc_g, acc_u, a_ptrs, a_row_ok, k0, K, g_ptrs, u_ptrs, s_base, z_base, g_word,
                                     u_word, gate_rows, up_rows, col_ok, stride_wk, stride_sn, stride_sk, GATED, WFMT,
                                     SFMT, GROUP_K, HAS_ZERO, SCALE_WORDS, PAIRED, DOT_PRECISION, BLOCK_M, BLOCK_N,
                                     BLOCK_K, EVEN_K, MMA_ORDER, RETIRE_DOTS)
    if SCALE_WORDS and WORD_TAIL:  # K past the last whole word: single steps with byte scales
        a_ptrs = a_base + a_rows[:, None] * stride_am + tl.arange(0, BLOCK_K)[None, :]
        for k0 in range(k_words, K, BLOCK_K):
            acc_g, acc_u = _swapped_step(acc_g, acc_u, a_ptrs, a_row_ok, k0, K, g_ptrs, u_ptrs, s_base, z_base,
                                         g_word, u_word, gate_rows, up_rows, col_ok, stride_wk, stride_sn, stride_sk,
                                         GATED, WFMT, SFMT, GROUP_K, HAS_ZERO, False, PAIRED, DOT_PRECISION,
                                         BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, MMA_ORDER, RETIRE_DOTS)
    return tl.trans(acc_g), tl.trans(acc_u)
