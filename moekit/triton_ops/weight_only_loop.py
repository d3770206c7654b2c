"""The K loop of the weight-only GEMMs (w4a16, w8a16, mxfp4, nvfp4): stored codes dequantized
straight into the dot's operand, with nothing but elementwise arithmetic between the load and the dot.

Why it is shaped this way (sm90 SASS, read with ``cuobjdump``): building a [BLOCK_N, BLOCK_K] tile,
interleaving its nibbles, reshaping it into scale groups and transposing it cost ~44 instructions
per weight element in layout shuffles, and the weight load, not feeding a dot directly, was never
pipelined: the decode GEMMs were instruction- and latency-bound far below the memory floor.

- Tiles are loaded as [K, N] (the dot's B operand), so no transpose.
- A byte of two 4-bit codes holds an even and an odd column: the low nibbles make one tile, the
  high nibbles another, and each meets the even or odd columns of the activations in its own dot
  (the activations are re-read with a stride of two; they are a few rows at decode).
- A step spans at most two scale groups (the launcher caps BLOCK_K at 2 x GROUP_K): each group's
  [BLOCK_N] scales are loaded once and picked per element with one select.
- The next step's codes and scales are loaded before this step's arithmetic (register double
  buffering): the loads stay in flight while the tensor cores work.

Per element this leaves a few integer ops making an fp32 from the code's bits (quant_formats), one
subtract of the zero point or none, one multiply by the scale, half a conversion.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moekit.triton_ops.quant_formats import E2M1_UNBIAS, E4M3_E2M1_SCALE, INT_MAGIC, e8m0_values

UINT4_MIDPOINT = tl.constexpr(8.0)  # symmetric int4 codes store q + 8


@triton.jit
def _stored_tile(ptrs, col_ok, first, stored_k, stride_k, HALF: tl.constexpr, EVEN_K: tl.constexpr):
    """The stored [HALF, BLOCK_N] codes (bytes for packed formats) from stored column ``first``;
    ``ptrs`` point at column 0 of the tile's rows."""
    if EVEN_K:
        return tl.load(ptrs + first * stride_k, mask=col_ok[None, :], other=0)
    else:
        kk = first + tl.arange(0, HALF)
        return tl.load(ptrs + first * stride_k, mask=(kk < stored_k)[:, None] & col_ok[None, :], other=0)


@triton.jit
def _group_vector(base, rows, col_ok, group, num_groups, stride_n, stride_k):
    """One scale group's raw [BLOCK_N] values (scales or zero points) for the weight rows. (The group
    test is made a tensor: the interpreter refuses a mask combined with a scalar.)"""
    in_range = (rows * 0 + group) < num_groups
    return tl.load(base + rows * stride_n + group * stride_k, mask=col_ok & in_range, other=0)


@triton.jit
def _load_step(w_ptrs, s_base, z_base, rows, col_ok, k0, K, stride_wk, stride_sn, stride_sk,
               PACKED: tl.constexpr, GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_K: tl.constexpr,
               EVEN_K: tl.constexpr):
    """Everything one K step reads of the weights: codes, and the raw scales / zero points of the (at
    most two) groups it spans (per-row zero points when a group spans K)."""
    if PACKED:
        codes = _stored_tile(w_ptrs, col_ok, k0 // 2, K // 2, stride_wk, BLOCK_K // 2, EVEN_K)
    else:
        codes = _stored_tile(w_ptrs, col_ok, k0, K, stride_wk, BLOCK_K, EVEN_K)
    s0, s1, z0, z1 = step_scales(s_base, z_base, rows, col_ok, k0, K, stride_sn, stride_sk, GROUP_K, HAS_ZERO, BLOCK_K)
    return codes, s0, s1, z0, z1


@triton.jit
def step_scales(s_base, z_base, rows, col_ok, k0, K, stride_sn, stride_sk, GROUP_K: tl.constexpr,
                HAS_ZERO: tl.constexpr, BLOCK_K: tl.constexpr):
    """The raw [rows] scales and zero points of the (at most two) groups the K step at k0 spans
    (per-row zero points when a group spans K)."""
    if GROUP_K > 0:
        num_groups = tl.cdiv(K, GROUP_K)
        g0 = k0 // GROUP_K
        g1 = (k0 + BLOCK_K - 1) // GROUP_K
        s0 = _group_vector(s_base, rows, col_ok, g0, num_groups, stride_sn, stride_sk)
        if GROUP_K < BLOCK_K:
            s1 = _group_vector(s_base, rows, col_ok, g1, num_groups, stride_sn, stride_sk)
        else:
            s1 = s0
        if HAS_ZERO:
            z0 = _group_vector(z_base, rows, col_ok, g0, num_groups, stride_sn, stride_sk)
            if GROUP_K < BLOCK_K:
                z1 = _group_vector(z_base, rows, col_ok, g1, num_groups, stride_sn, stride_sk)
            else:
                z1 = z0
        else:
            z0 = s0
            z1 = s1
    else:
        s0 = tl.zeros_like(rows)
        s1 = s0
        if HAS_ZERO:
            z0 = _group_vector(z_base, rows, col_ok, 0, 1, stride_sn, stride_sk)
        else:
            z0 = s0
        z1 = z0
    return s0, s1, z0, z1


@triton.jit
def code_bits(stored, HIGH: tl.constexpr, WFMT: tl.constexpr):
    """fp32 values made from the codes' bits, no conversion instruction: e2m1 -> value * 2**-126,
    uint4 -> 2**23 + code, int8 -> 2**23 + 128 + code (see quant_formats)."""
    if WFMT == 1:
        return (stored.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True)
    byte = stored.to(tl.int32) & 0xFF
    if WFMT == 3:
        if HIGH:
            bits = ((byte & 0x70) << 18) | ((byte & 0x80) << 24)
        else:
            bits = ((byte & 7) << 22) | ((byte & 8) << 28)
    else:
        if HIGH:
            bits = (byte >> 4) | 0x4B000000
        else:
            bits = (byte & 0xF) | 0x4B000000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def plain_scale_values(raw, SFMT: tl.constexpr):
    """Raw [BLOCK_N] scales (fp32, or e8m0 / e4m3 bytes) as their fp32 values. e4m3 by the hardware's
    conversion (2 instructions, as the decode GEMV; the bits took ~12). quant_tiles.scale_values
    keeps decoding the bits: the interpreter's conversion reads the NaN bytes as 480."""
    if SFMT == 0:
        return raw.to(tl.float32)
    elif SFMT == 1:
        return e8m0_values(raw.to(tl.int32) & 0xFF)
    else:
        return raw.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)


@triton.jit
def scale_values(raw, WFMT: tl.constexpr, SFMT: tl.constexpr):
    """A group's [BLOCK_N] scales as fp32, times the 2**126 e2m1 bits leave out (e4m3 scales take
    2**117 of it; row_weight_factor applies the rest)."""
    s = plain_scale_values(raw, SFMT)
    if WFMT == 3:
        s = s * (E4M3_E2M1_SCALE if SFMT == 2 else E2M1_UNBIAS)
    return s


@triton.jit
def code_offsets(z, WFMT: tl.constexpr, HAS_ZERO: tl.constexpr):
    """What the code bits carry besides the code minus its zero point (fp32 [BLOCK_N] or scalar)."""
    if HAS_ZERO:
        zero = z.to(tl.float32)
    elif WFMT == 2:
        zero = UINT4_MIDPOINT
    else:
        zero = 0.0
    if WFMT == 1:
        return zero + (INT_MAGIC + 128.0)  # (tensor first: a constexpr on the left stays a constexpr)
    return zero + INT_MAGIC


@triton.jit
def _dequantize(stored, s0, s1, z0, z1, HIGH: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr,
                GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr, SPLIT: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """[HALF, BLOCK_N] operand tile: rows before SPLIT belong to the first group, the rest to the
    second. A scale spanning K is left to the epilogue."""
    v = code_bits(stored, HIGH, WFMT)
    first = (tl.arange(0, stored.shape[0]) < SPLIT)[:, None]
    if WFMT != 3:
        if HAS_ZERO and GROUP_K > 0:
            v = v - tl.where(first, code_offsets(z0, WFMT, HAS_ZERO)[None, :],
                             code_offsets(z1, WFMT, HAS_ZERO)[None, :])
        elif HAS_ZERO:
            v = v - code_offsets(z0, WFMT, HAS_ZERO)[None, :]
        else:
            v = v - code_offsets(z0, WFMT, HAS_ZERO)
    if GROUP_K > 0:
        v = v * tl.where(first, scale_values(s0, WFMT, SFMT)[None, :], scale_values(s1, WFMT, SFMT)[None, :])
    elif WFMT == 3:
        v = v * E2M1_UNBIAS
    return v.to(DOT_DTYPE)


@triton.jit
def _step_dot(acc, a_even, a_odd, stored, s0, s1, z0, z1, WFMT: tl.constexpr, SFMT: tl.constexpr,
              GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_K: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    PACKED: tl.constexpr = WFMT >= 2
    dot_dtype = a_even.dtype
    if PACKED:
        # stored row j holds columns 2j, 2j+1: group 0 up to column GROUP_K
        SPLIT: tl.constexpr = GROUP_K // 2 if GROUP_K > 0 and GROUP_K < BLOCK_K else BLOCK_K
        lo = _dequantize(stored, s0, s1, z0, z1, False, WFMT, SFMT, GROUP_K, HAS_ZERO, SPLIT, dot_dtype)
        acc = tl.dot(a_even, lo, acc, input_precision=DOT_PRECISION)
        hi = _dequantize(stored, s0, s1, z0, z1, True, WFMT, SFMT, GROUP_K, HAS_ZERO, SPLIT, dot_dtype)
        acc = tl.dot(a_odd, hi, acc, input_precision=DOT_PRECISION)
    else:
        SPLIT8: tl.constexpr = GROUP_K if GROUP_K > 0 and GROUP_K < BLOCK_K else BLOCK_K
        w = _dequantize(stored, s0, s1, z0, z1, False, WFMT, SFMT, GROUP_K, HAS_ZERO, SPLIT8, dot_dtype)
        acc = tl.dot(a_even, w, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def activation_tiles(a_ptrs, a_row_ok, k0, K, PACKED: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The activations of one K step (one contiguous load): even and odd columns for packed codes,
    else all of them. ``a_ptrs`` point at column 0 of the rows."""
    if EVEN_K:
        a = tl.load(a_ptrs + k0, mask=a_row_ok[:, None], other=0.0)
    else:
        a = tl.load(a_ptrs + k0, mask=a_row_ok[:, None] & (k0 + tl.arange(0, BLOCK_K) < K)[None, :], other=0.0)
    if PACKED:
        even, odd = tl.split(tl.reshape(a, (BLOCK_M, BLOCK_K // 2, 2)))
    else:
        even = a
        odd = a
    return even, odd


@triton.jit
def weight_only_mainloop(a_base, a_rows, a_row_ok, stride_am, K,
                         w_base, s_base, z_base, gate_rows, up_rows, col_ok,
                         stride_wn, stride_wk, stride_sn, stride_sk,
                         GATED: tl.constexpr, WFMT: tl.constexpr, SFMT: tl.constexpr, GROUP_K: tl.constexpr,
                         HAS_ZERO: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """acc_gate, acc_up = a @ W[gate_rows]^T, a @ W[up_rows]^T over all of K (fp32 [BLOCK_M,
    BLOCK_N]; acc_up is zeros when not GATED). Rows of ``a`` are ``a_rows`` of ``a_base``. EVEN_K:
    BLOCK_K divides K (no K masks)."""
    PACKED: tl.constexpr = WFMT >= 2
    STORED_K: tl.constexpr = BLOCK_K // 2 if PACKED else BLOCK_K
    a_ptrs = a_base + a_rows[:, None] * stride_am + tl.arange(0, BLOCK_K)[None, :]
    kq = tl.arange(0, STORED_K)[:, None] * stride_wk
    g_ptrs = w_base + gate_rows[None, :] * stride_wn + kq
    u_ptrs = w_base + up_rows[None, :] * stride_wn + kq
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g_codes, g_s0, g_s1, g_z0, g_z1 = _load_step(g_ptrs, s_base, z_base, gate_rows, col_ok, 0, K, stride_wk,
                                                 stride_sn, stride_sk, PACKED, GROUP_K, HAS_ZERO, BLOCK_K, EVEN_K)
    if GATED:
        u_codes, u_s0, u_s1, u_z0, u_z1 = _load_step(u_ptrs, s_base, z_base, up_rows, col_ok, 0, K, stride_wk,
                                                     stride_sn, stride_sk, PACKED, GROUP_K, HAS_ZERO, BLOCK_K,
                                                     EVEN_K)
    else:
        u_codes, u_s0, u_s1, u_z0, u_z1 = g_codes, g_s0, g_s1, g_z0, g_z1
    for k0 in range(0, K, BLOCK_K):
        # the next step's weights first (after the last step: the last one again, or masked)
        k_next = k0 + BLOCK_K
        if EVEN_K:
            k_next = tl.minimum(k_next, K - BLOCK_K)
        n_codes, n_s0, n_s1, n_z0, n_z1 = _load_step(g_ptrs, s_base, z_base, gate_rows, col_ok, k_next, K,
                                                     stride_wk, stride_sn, stride_sk, PACKED, GROUP_K,
                                                     HAS_ZERO, BLOCK_K, EVEN_K)
        if GATED:
            m_codes, m_s0, m_s1, m_z0, m_z1 = _load_step(u_ptrs, s_base, z_base, up_rows, col_ok, k_next, K,
                                                         stride_wk, stride_sn, stride_sk, PACKED,
                                                         GROUP_K, HAS_ZERO, BLOCK_K, EVEN_K)
        else:
            m_codes, m_s0, m_s1, m_z0, m_z1 = n_codes, n_s0, n_s1, n_z0, n_z1
        a_even, a_odd = activation_tiles(a_ptrs, a_row_ok, k0, K, PACKED, BLOCK_M, BLOCK_K, EVEN_K)
        acc_g = _step_dot(acc_g, a_even, a_odd, g_codes, g_s0, g_s1, g_z0, g_z1, WFMT, SFMT, GROUP_K, HAS_ZERO,
                          BLOCK_K, DOT_PRECISION)
        if GATED:
            acc_u = _step_dot(acc_u, a_even, a_odd, u_codes, u_s0, u_s1, u_z0, u_z1, WFMT, SFMT, GROUP_K,
                              HAS_ZERO, BLOCK_K, DOT_PRECISION)
        g_codes, g_s0, g_s1, g_z0, g_z1 = n_codes, n_s0, n_s1, n_z0, n_z1
        u_codes, u_s0, u_s1, u_z0, u_z1 = m_codes, m_s0, m_s1, m_z0, m_z1
    return acc_g, acc_u
