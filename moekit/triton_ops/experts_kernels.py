"""The fused experts GEMMs on expert-aligned rows (see align.py), fp32 accumulate.

gemm1: for each block of rows of one expert, gate and up tiles of w13 in the same program, the
bias and the activation in the epilogue: only the I-wide activated rows reach memory.
gemm2: activated rows @ w2, the bias, then the routing weight in the epilogue, written per pair.
sum  : a token's k pair rows summed in fp32 (skipped for top_k = 1, where gemm2 writes the token).

Quantized weights (moekit's layout) go to the sibling kernels in quant_gemm.py, through the same
launchers with ``quant=``.

Pairs with an out-of-range expert id are absent from the aligned rows and masked in the sum, so
they contribute nothing; no program reads or writes outside its tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.activations import Activation, ActivationKind, GateUpLayout
from moekit.quant.spec import QuantSpec
from moekit.triton_ops.align import AlignedPairs, align_pairs_by_expert, pairs_in_place
from moekit.triton_ops.launcher import cdiv, launch, next_pow2
from moekit.triton_ops.tile_configs import GEMV_MAX_BLOCK_M, ExpertsTiles, GemmTiles

ACT_CODE = {ActivationKind.SILU: 0, ActivationKind.GELU: 1, ActivationKind.SWIGLUOAI: 2, ActivationKind.RELU2: 3}


@triton.jit
def _tile_ids(NUM_BLOCKS_M, num_blocks_n, GROUP_M: tl.constexpr):
    """Program id -> (M block, N block), walking GROUP_M M blocks per N tile (weights stay in L2)."""
    pid = tl.program_id(0)
    in_group = GROUP_M * num_blocks_n
    first_m = (pid // in_group) * GROUP_M
    group_size = tl.minimum(NUM_BLOCKS_M - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_size
    pid_n = (pid % in_group) // group_size
    return pid_m, pid_n


@triton.jit
def _block_expert(block_expert_ptr, num_rows_ptr, pid_m, num_experts, BLOCK_M: tl.constexpr, IN_PLACE: tl.constexpr):
    """The block's expert, or -1 for a block with nothing to do (past the rows in use; in place: an
    out-of-range id)."""
    if IN_PLACE:
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        return tl.where((expert >= 0) & (expert < num_experts), expert, -1)
    else:
        # (an idle block's entry is never written: read, then dropped)
        return tl.where(pid_m * BLOCK_M >= tl.load(num_rows_ptr), -1, tl.load(block_expert_ptr + pid_m).to(tl.int64))


@triton.jit
def _row_block(sorted_ptr, pid_m, num_pairs, BLOCK_M: tl.constexpr, IN_PLACE: tl.constexpr):
    """The block's aligned rows, the pair in each row and whether it is real (not padding). In place
    (align.pairs_in_place) block m holds pair m in its first row."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if IN_PLACE:
        pairs = tl.where(tl.arange(0, BLOCK_M) == 0, pid_m, num_pairs)
    else:
        pairs = tl.load(sorted_ptr + rows)
    return rows, pairs, pairs < num_pairs


@triton.jit
def gate_up_rows(cols, I, INTERLEAVED: tl.constexpr):
    """w13's gate and up rows of output columns ``cols``: interleaved (gate 2c, up 2c+1) or
    concatenated (gate c, up I + c)."""
    if INTERLEAVED:
        return 2 * cols, 2 * cols + 1
    else:
        return cols, cols + I


@triton.jit
def _activate(gate, up, alpha, limit, ACT: tl.constexpr):
    if ACT == 0:  # silu(gate) * up
        return gate * tl.sigmoid(gate) * up
    elif ACT == 1:  # exact gelu(gate) * up
        return 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)) * up
    elif ACT == 2:  # gpt-oss: gate clamped above, up on both sides
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        return (up + 1.0) * gate * tl.sigmoid(alpha * gate)
    else:  # relu(x)^2, no gate
        r = tl.maximum(gate, 0.0)
        return r * r


@triton.jit
def _weight_tile(ptrs, desc, row, k, k_ok, col_ok, USE_TMA: tl.constexpr, EVEN_K: tl.constexpr):
    """A [BLOCK_K, BLOCK_N] tile of an expert's weight rows: by the tensor-memory accelerator from a
    [E*N, K] descriptor (rows past the tile's end are masked at the store; zeros past K), or by
    pointers."""
    if USE_TMA:
        return tl.trans(desc.load([row, k]))
    elif EVEN_K:
        return tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    else:
        return tl.load(ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _gemm1_activation(
    x_ptr, w_ptr, w_desc, bias_ptr, out_ptr, sorted_ptr, block_expert_ptr, num_rows_ptr,
    num_pairs, top_k, num_experts, K, I, NUM_BLOCKS_M,
    stride_xm, stride_xk, stride_we, stride_wn, stride_wk, stride_be, stride_bn, stride_om,
    alpha, limit,
    ACT: tl.constexpr, GATED: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    IN_PLACE: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(NUM_BLOCKS_M, tl.cdiv(I, BLOCK_N), GROUP_M)
    expert = _block_expert(block_expert_ptr, num_rows_ptr, pid_m, num_experts, BLOCK_M, IN_PLACE)
    if expert < 0:
        return
    rows, pairs, row_ok = _row_block(sorted_ptr, pid_m, num_pairs, BLOCK_M, IN_PLACE)
    tokens = (pairs // top_k).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < I
    gate_rows, up_rows = gate_up_rows(cols, I, INTERLEAVED)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tokens[:, None] * stride_xm + ks[None, :] * stride_xk
    w_base = w_ptr + expert * stride_we + ks[:, None] * stride_wk
    g_ptrs = w_base + gate_rows[None, :] * stride_wn
    u_ptrs = w_base + up_rows[None, :] * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Descriptor rows (TMA, concatenated layout only): the expert's gate tile, then its up tile.
    gate_row = (expert * (stride_we // stride_wn) + pid_n * BLOCK_N).to(tl.int32)
    k_ok = ks < K
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if not EVEN_K:
            k_ok = ks < K - k * BLOCK_K
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        g = _weight_tile(g_ptrs, w_desc, gate_row, k * BLOCK_K, k_ok, col_ok, USE_TMA, EVEN_K)
        acc_g = tl.dot(a, g, acc_g, input_precision=DOT_PRECISION)
        if GATED:
            u = _weight_tile(u_ptrs, w_desc, gate_row + I, k * BLOCK_K, k_ok, col_ok, USE_TMA, EVEN_K)
            acc_u = tl.dot(a, u, acc_u, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_xk
        g_ptrs += BLOCK_K * stride_wk
        u_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        b_base = bias_ptr + expert * stride_be
        acc_g += tl.load(b_base + gate_rows * stride_bn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_u += tl.load(b_base + up_rows * stride_bn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    h = _activate(acc_g, acc_u, alpha, limit, ACT)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, h.to(out_ptr.dtype.element_ty), mask=col_ok[None, :])


@triton.jit
def _gemm2_weighted(
    a_ptr, w_ptr, w_desc, bias_ptr, weight_ptr, out_ptr, sorted_ptr, block_expert_ptr, num_rows_ptr,
    num_pairs, num_experts, N, K, NUM_BLOCKS_M,
    stride_am, stride_we, stride_wn, stride_wk, stride_be, stride_bn, stride_om,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    IN_PLACE: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(NUM_BLOCKS_M, tl.cdiv(N, BLOCK_N), GROUP_M)
    expert = _block_expert(block_expert_ptr, num_rows_ptr, pid_m, num_experts, BLOCK_M, IN_PLACE)
    if expert < 0:
        return
    rows, pairs, row_ok = _row_block(sorted_ptr, pid_m, num_pairs, BLOCK_M, IN_PLACE)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    # The activated rows are stored by aligned row, so padding rows exist (finite, never stored).
    a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_am + ks[None, :]
    w_ptrs = w_ptr + expert * stride_we + cols[None, :] * stride_wn + ks[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_row = (expert * (stride_we // stride_wn) + pid_n * BLOCK_N).to(tl.int32)
    k_ok = ks < K
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
        else:
            k_ok = ks < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
        w = _weight_tile(w_ptrs, w_desc, w_row, k * BLOCK_K, k_ok, col_ok, USE_TMA, EVEN_K)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + expert * stride_be + cols * stride_bn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc *= tl.load(weight_ptr + pairs, mask=row_ok, other=0.0)[:, None]
    out_ptrs = out_ptr + pairs.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _sum_over_topk(y_ptr, ids_ptr, out_ptr, H, num_experts, top_k,
                   BLOCK_TOPK: tl.constexpr, BLOCK_H: tl.constexpr, PARTS: tl.constexpr = 1):
    """out[t] = sum of the token's pair rows (PARTS rows per pair: a split K's parts, in order)."""
    token = tl.program_id(0).to(tl.int64)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    slots = tl.arange(0, BLOCK_TOPK)
    ids = tl.load(ids_ptr + token * top_k + slots, mask=slots < top_k, other=-1)
    ok = (ids >= 0) & (ids < num_experts)  # an out-of-range id's row was never written: skip it
    total = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for part in tl.static_range(PARTS):
        y = tl.load(y_ptr + ((token * top_k + slots) * PARTS + part)[:, None] * H + hs[None, :],
                    mask=ok[:, None] & (hs < H)[None, :], other=0.0)
        total += tl.sum(y.to(tl.float32), 0)
    tl.store(out_ptr + token * H + hs, total.to(out_ptr.dtype.element_ty), mask=hs < H)


def fused_experts(
    x: torch.Tensor,  # [T, H]
    w13,  # [E, 2I, H] (or [E, I, H] without a gate): a tensor, or a QuantizedMatrix with ``quant``
    w2,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] fp32
    topk_ids: torch.Tensor,  # [T, k] int32/int64
    activation: Activation,
    gate_up_layout: GateUpLayout,
    tiles: ExpertsTiles,
    w13_bias: torch.Tensor | None = None,
    w2_bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,  # [T, H] x.dtype, written whole (tests pass a poisoned one)
    *,
    quant: QuantSpec | None = None,  # the weights' scheme (quant/spec.py); None for dtype weights
    a13_scale: torch.Tensor | None = None,  # static activation scales (fp8-per-tensor-static)
    a2_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_j topk_weights[t, j] * expert_{ids[t, j]}(x[t]) as [T, H] in x.dtype."""
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    num_experts = (w2.data if quant is not None else w2).shape[0]
    if out is None:
        out = torch.empty(num_tokens, hidden, dtype=x.dtype, device=x.device)
    if num_tokens == 0:
        return out
    if max(tiles.gemm1.split_k, tiles.gemm2.split_k) > 1 and (quant is None or not quant.weight_only
                                                                or tiles.block_m > GEMV_MAX_BLOCK_M):
        raise ValueError(f"split_k > 1 ({tiles}) is for the decode GEMV only: weight-only quantized weights "
                         "with block_m 1, 2 or 4")
    if (tiles.gemm1.swap_ab or tiles.gemm2.swap_ab) and not _swap_runs(quant, w13, w2, tiles.block_m):
        raise ValueError(f"swap_ab ({tiles}) is for the weight-only tensor-core GEMMs only: weight-only quantized "
                         f"weights without act-order g_idx, block_m > {GEMV_MAX_BLOCK_M}")
    topk_ids = topk_ids.contiguous()
    if num_tokens == 1 and (quant is None or tiles.block_m <= GEMV_MAX_BLOCK_M):
        # one token: no alignment launch (align.pairs_in_place); quantized tensor-core kernels still align
        aligned = pairs_in_place(topk_ids, tiles.block_m)
    else:
        aligned = align_pairs_by_expert(topk_ids, num_experts, tiles.block_m)
    activated = launch_gemm1(x, w13, w13_bias, aligned, top_k, activation, gate_up_layout, tiles.gemm1,
                             quant=quant, a_scale=a13_scale, w2_mma_order=quant is not None and w2.mma_order)
    parts = tiles.gemm2.split_k
    if parts > 1:  # the decode GEMV's split K (weight_only_gemv.py): fp32 parts, summed with the slots
        pair_rows = torch.empty(num_tokens * top_k * parts, hidden, dtype=torch.float32, device=x.device)
        launch_gemm2(activated, w2, w2_bias, topk_weights, aligned, pair_rows, tiles.gemm2, quant=quant,
                     a_scale=a2_scale)
        return launch_sum(pair_rows, topk_ids, num_experts, out, parts)
    if top_k == 1:
        # gemm2 writes each token's row itself; a token whose id is out of range keeps zeros.
        launch_gemm2(activated, w2, w2_bias, topk_weights, aligned, out.zero_(), tiles.gemm2, quant=quant,
                     a_scale=a2_scale)
        return out
    pair_rows = torch.empty(num_tokens * top_k, hidden, dtype=x.dtype, device=x.device)
    launch_gemm2(activated, w2, w2_bias, topk_weights, aligned, pair_rows, tiles.gemm2, quant=quant, a_scale=a2_scale)
    launch_sum(pair_rows, topk_ids, num_experts, out)
    return out


def _swap_runs(quant: QuantSpec | None, w13, w2, block_m: int) -> bool:
    """Whether the swapped weight-only loop (weight_only_swapped.py) runs these weights and rows."""
    return (quant is not None and quant.weight_only and block_m > GEMV_MAX_BLOCK_M and w13.g_idx is None
            and w2.g_idx is None)


def launch_gemm1(x, w13, w13_bias, aligned: AlignedPairs, top_k: int, activation: Activation,
                 gate_up_layout: GateUpLayout, g: GemmTiles, activated: torch.Tensor | None = None, *,
                 quant: QuantSpec | None = None, a_scale: torch.Tensor | None = None, w2_mma_order: bool = False):
    """x @ w13 per aligned row block, bias and activation fused: the activated rows [rows, I].
    With ``quant``, w13 is a QuantizedMatrix and quant_gemm.launch_gemm1_quant runs instead."""
    if quant is not None:
        from moekit.triton_ops.quant_gemm import launch_gemm1_quant

        return launch_gemm1_quant(x, w13, w13_bias, aligned, top_k, activation, gate_up_layout, g, quant, a_scale,
                                  w2_mma_order)
    rows, block_m = aligned.rows, aligned.block_m
    hidden, inter = x.shape[1], w13.shape[1] // 2 if activation.gated else w13.shape[1]
    if activated is None:
        activated = torch.empty(rows, inter, dtype=x.dtype, device=x.device)
    bias = w13_bias if w13_bias is not None else w13  # any pointer: never read without HAS_BIAS
    desc = _weight_descriptor(w13, g) if gate_up_layout is GateUpLayout.CONCATENATED else None
    LAST_COMPILED["gemm1"] = launch(
        _gemm1_activation, (rows // block_m * cdiv(inter, g.block_n),),
        (x, w13, desc if desc is not None else w13, bias, activated, aligned.sorted_pairs, aligned.block_expert,
         aligned.num_rows, x.shape[0] * top_k, top_k, w13.shape[0], hidden, inter, rows // block_m,
         x.stride(0), x.stride(1), w13.stride(0), w13.stride(1), w13.stride(2),
         bias.stride(0), bias.stride(-1), activated.stride(0), activation.alpha, activation.limit),
        dict(ACT=ACT_CODE[activation.kind], GATED=activation.gated,
             INTERLEAVED=gate_up_layout is GateUpLayout.INTERLEAVED, HAS_BIAS=w13_bias is not None,
             EVEN_K=hidden % g.block_k == 0, DOT_PRECISION=_precision(x.dtype), USE_TMA=desc is not None,
             BLOCK_M=block_m, BLOCK_N=g.block_n, BLOCK_K=g.block_k, GROUP_M=g.group_m, IN_PLACE=aligned.in_place),
        g.num_warps, g.num_stages)
    return activated


def launch_gemm2(activated, w2, w2_bias, topk_weights, aligned: AlignedPairs, out_rows: torch.Tensor, g: GemmTiles,
                 *, quant: QuantSpec | None = None, a_scale: torch.Tensor | None = None):
    """activated @ w2 per aligned row block, bias and routing weight fused, into out_rows[pair].
    With ``quant``, w2 is a QuantizedMatrix and quant_gemm.launch_gemm2_quant runs instead."""
    if quant is not None:
        from moekit.triton_ops.quant_gemm import launch_gemm2_quant

        return launch_gemm2_quant(activated, w2, w2_bias, topk_weights, aligned, out_rows, g, quant, a_scale)
    rows, block_m = aligned.rows, aligned.block_m
    hidden, inter = w2.shape[1], w2.shape[2]
    bias = w2_bias if w2_bias is not None else w2
    desc = _weight_descriptor(w2, g)
    LAST_COMPILED["gemm2"] = launch(
        _gemm2_weighted, (rows // block_m * cdiv(hidden, g.block_n),),
        (activated, w2, desc if desc is not None else w2, bias, topk_weights.reshape(-1), out_rows, aligned.sorted_pairs, aligned.block_expert,
         aligned.num_rows, topk_weights.numel(), w2.shape[0], hidden, inter, rows // block_m,
         activated.stride(0), w2.stride(0), w2.stride(1), w2.stride(2), bias.stride(0), bias.stride(-1),
         out_rows.stride(0)),
        dict(HAS_BIAS=w2_bias is not None, EVEN_K=inter % g.block_k == 0, DOT_PRECISION=_precision(activated.dtype),
             USE_TMA=desc is not None, BLOCK_M=block_m, BLOCK_N=g.block_n, BLOCK_K=g.block_k, GROUP_M=g.group_m,
             IN_PLACE=aligned.in_place),
        g.num_warps, g.num_stages)
    return out_rows


def launch_sum(pair_rows, topk_ids, num_experts: int, out, parts: int = 1):
    num_tokens, hidden = out.shape
    block_h = min(1024, next_pow2(hidden))
    launch(_sum_over_topk, (num_tokens, cdiv(hidden, block_h)),
           (pair_rows, topk_ids, out, hidden, num_experts, topk_ids.shape[1]),
           dict(BLOCK_TOPK=next_pow2(topk_ids.shape[1]), BLOCK_H=block_h, PARTS=parts), 4, 3)
    return out


def _weight_descriptor(w: torch.Tensor, g: GemmTiles):
    """A TMA descriptor of expert weights [E, N, K] seen as [E*N, K], when the tiles ask for TMA and
    the tensor allows it (contiguous rows, 16-byte aligned base and row stride, boxes <= 256);
    otherwise None: the kernel loads by pointers, with the same result."""
    if not g.tma or g.block_n > 256 or g.block_k > 256 or w.stride(2) != 1 or w.stride(0) != w.shape[1] * w.stride(1):
        return None
    if w.data_ptr() % 16 or (w.stride(1) * w.element_size()) % 16:
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(w, [w.shape[0] * w.shape[1], w.shape[2]], [w.stride(1), 1], [g.block_n, g.block_k])


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 exact (tests); ignored for 16-bit dots


# The compiled kernels of the latest launches (registers, spills, asm): read by ``moekit tune``.
LAST_COMPILED: dict[str, object] = {}
