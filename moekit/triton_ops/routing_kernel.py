"""Fused routing: scores, correction bias, (grouped) top-k, renormalization and routed scaling in one
Triton kernel. It chooses the same experts as ``moekit.route``'s PyTorch path, in the same order
(best first; the lowest expert id wins a tie), and gives the same weights within fp32 rounding.

Layout: a program holds ``ROWS`` tokens as a [ROWS, BLOCK_G, BLOCK_GS] tile of their logits, the
experts split into their groups (one group when routing is not grouped), so a group's score is one
reduction over the last axis and non-power-of-two group sizes are just masked slots. Top-k is k rounds
of "argmax, then take it out" over the tile held in registers, which is why E is bounded.

Arguments are the ones ``moekit.route`` has already validated; the kernel itself never reads or writes
out of bounds and always returns ids in [0, E), whatever the logits hold (NaN included).
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from moekit.routing import Scoring
from moekit.triton_ops import interpreting
from moekit.triton_ops.launcher import launch, next_pow2

MAX_EXPERTS = 1024  # one row of logits (padded to powers of two) must fit in a program's registers
MAX_PADDED_EXPERTS = 2048  # next_pow2(groups) * next_pow2(group size)
MAX_TOP_K = 32  # the top-k rounds are unrolled
MAX_GROUPS = 64  # so are the rounds that pick the best groups

_SCORING_CODE = {"softmax": 0, "sigmoid": 1, "topk_softmax": 2, "topk_sigmoid": 3}

# Tile elements (rows x padded experts) per program. On a GPU about 1024 keeps the tile in registers
# and leaves many programs for large batches (to be tuned on the device); the interpreter runs one
# program at a time in numpy, so there fewer, larger programs are much faster.
_GPU_TILE = 1024
_ONE_ROW_MAX_TOKENS = 256  # up to here a program per row fits in one wave of the GPU
_INTERPRETER_TILE = 1 << 20  # triton's largest tensor


@triton.jit
def _row_max(x):  # [R, G, S] -> [R]
    return tl.max(tl.max(x, axis=2), axis=1)


@triton.jit
def _row_min(x):
    return tl.min(tl.min(x, axis=2), axis=1)


@triton.jit
def _row_sum(x):
    return tl.sum(tl.sum(x, axis=2), axis=1)


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    if PRECISE:  # expf as PyTorch's own kernels use it (tl.exp is a faster approximation on GPUs)
        return libdevice.exp(x)
    else:  # the interpreter has no libdevice; its tl.exp is numpy's
        return tl.exp(x)


@triton.jit
def _div(a, b):  # correctly rounded, as in PyTorch (a plain `/` is approximate on GPUs)
    return tl.math.div_rn(a, b)


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """fp32 x rounded to `dtype` (to nearest, ties to even), returned as fp32."""
    if dtype == tl.bfloat16:  # by hand: the interpreter's fp32 -> bf16 cast truncates
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def _fused_route_kernel(
    logits_ptr, bias_ptr, weights_ptr, ids_ptr,
    num_tokens, stride_t, stride_e, scaling,
    TOP_K: tl.constexpr, SCORING: tl.constexpr, RENORMALIZE: tl.constexpr, HAS_BIAS: tl.constexpr,
    NUM_GROUPS: tl.constexpr, GROUP_SIZE: tl.constexpr, TOPK_GROUPS: tl.constexpr, TOP2_SUM: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GS: tl.constexpr, BLOCK_K: tl.constexpr, PRECISE: tl.constexpr,
):
    NUM_EXPERTS: tl.constexpr = NUM_GROUPS * GROUP_SIZE
    NEG_INF: tl.constexpr = float("-inf")
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # int64: T * E may pass 2**31
    rows3 = rows[:, None, None]
    group = tl.arange(0, BLOCK_G)[None, :, None]
    slot = tl.arange(0, BLOCK_GS)[None, None, :]
    expert = group * GROUP_SIZE + slot
    is_expert = (group < NUM_GROUPS) & (slot < GROUP_SIZE)

    # Rows past the end read zeros (not -inf), so no NaN arises in them; they are never stored.
    x = tl.load(logits_ptr + rows3 * stride_t + expert * stride_e, mask=(rows3 < num_tokens) & is_expert, other=0.0)
    logits = tl.where(is_expert, x.to(tl.float32), NEG_INF)
    if SCORING == 0:  # softmax over all experts
        e = _exp(logits - _row_max(logits)[:, None, None], PRECISE)
        scores = _div(e, _row_sum(e)[:, None, None])
    elif SCORING == 1:  # sigmoid per expert, as PyTorch computes it
        scores = _div(1.0, 1.0 + _exp(-logits, PRECISE))
    else:  # top-k on the raw logits; the weights come from the chosen logits after the top-k
        scores = logits

    choice = scores  # what the top-k ranks; `scores` is what the weights are made of
    if HAS_BIAS:  # the correction bias steers the choice, never the weights
        bias = tl.load(bias_ptr + expert, mask=is_expert, other=0.0)
        if SCORING <= 1:
            choice = scores + bias.to(tl.float32)
        else:  # PyTorch adds the bias in the logits' dtype: round the same way
            choice = _round_to(logits + _round_to(bias.to(tl.float32), logits_ptr.dtype.element_ty),
                               logits_ptr.dtype.element_ty)
    # Padded slots and NaN can never win, so the argmax below always finds an available expert.
    choice = tl.where(is_expert & (choice == choice), choice, NEG_INF)
    available = is_expert

    if NUM_GROUPS > 1:  # keep only the TOPK_GROUPS best groups
        best = tl.max(choice, axis=2)  # [R, G]
        if TOP2_SUM:  # DeepSeek-V3 (with a bias): a group scores the sum of its two best experts
            first = tl.min(tl.where(choice == best[:, :, None], slot, BLOCK_GS), axis=2)
            second = tl.max(tl.where(slot == first[:, :, None], NEG_INF, choice), axis=2)
            group_score = best + second
        else:  # DeepSeek-V2: its best expert
            group_score = best
        gid = tl.arange(0, BLOCK_G)[None, :]
        open_group = tl.broadcast_to(gid < NUM_GROUPS, (ROWS, BLOCK_G))  # groups not kept yet
        for _ in tl.static_range(TOPK_GROUPS):
            cand = tl.where(open_group, group_score, NEG_INF)
            top = tl.max(cand, axis=1)
            g = tl.min(tl.where(open_group & (cand == top[:, None]), gid, BLOCK_G), axis=1)
            open_group = open_group & (gid != g[:, None])
        kept = (gid < NUM_GROUPS) & ~open_group
        available = available & kept[:, :, None]

    kk = tl.arange(0, BLOCK_K)[None, :]
    top_w = tl.zeros((ROWS, BLOCK_K), tl.float32)
    top_id = tl.zeros((ROWS, BLOCK_K), tl.int32)
    for j in tl.static_range(TOP_K):
        cand = tl.where(available, choice, NEG_INF)
        top = _row_max(cand)
        pick = _row_min(tl.where(available & (cand == top[:, None, None]), expert, NUM_EXPERTS))
        hit = expert == pick[:, None, None]
        w = _row_max(tl.where(hit, scores, NEG_INF))
        available = available & ~hit
        top_w = tl.where(kk == j, w[:, None], top_w)
        top_id = tl.where(kk == j, pick[:, None], top_id)

    in_k = kk < TOP_K
    if SCORING == 2:  # gpt-oss: softmax over the k chosen logits
        top_w = tl.where(in_k, top_w, NEG_INF)
        e = _exp(top_w - tl.max(top_w, axis=1)[:, None], PRECISE)
        top_w = _div(e, tl.sum(e, axis=1)[:, None])
    elif SCORING == 3:  # Llama-4: sigmoid of each chosen logit
        top_w = tl.where(in_k, _div(1.0, 1.0 + _exp(-top_w, PRECISE)), 0.0)
    if RENORMALIZE:  # the same epsilon as the PyTorch path (DeepSeek-V3's router)
        top_w = _div(top_w, tl.sum(top_w, axis=1)[:, None] + 1e-20)
    top_w = top_w * scaling

    out = rows[:, None] * TOP_K + kk
    mask = (rows[:, None] < num_tokens) & in_k
    tl.store(weights_ptr + out, top_w, mask=mask)
    tl.store(ids_ptr + out, top_id, mask=mask)


def fused_route_supported(num_experts: int, top_k: int, scoring, num_groups: Optional[int]) -> tuple[bool, str]:
    """Whether the kernel handles this routing, and if not, why (for errors and explanations)."""
    if not isinstance(scoring, Scoring):
        return False, "user routing functions run in PyTorch"
    if num_experts > MAX_EXPERTS:
        return False, f"{num_experts} experts exceed the {MAX_EXPERTS} one program row holds in registers"
    if top_k > MAX_TOP_K:
        return False, f"top_k {top_k} exceeds the kernel's {MAX_TOP_K} unrolled rounds"
    groups, group_size = _group_layout(num_experts, scoring, num_groups)
    if groups > MAX_GROUPS:
        return False, f"{groups} groups exceed the kernel's {MAX_GROUPS} unrolled group rounds"
    padded = next_pow2(groups) * next_pow2(group_size)
    if padded > MAX_PADDED_EXPERTS:
        return False, (f"{groups} groups of {group_size} experts pad to {padded} slots, more than the "
                       f"{MAX_PADDED_EXPERTS} a program row holds")
    return True, "supported"


def _group_layout(num_experts: int, scoring: Scoring, num_groups: Optional[int]) -> tuple[int, int]:
    # Grouping applies to softmax/sigmoid scores only; the PyTorch path ignores it for top-k on logits.
    grouped = num_groups is not None and num_groups > 1 and scoring in (Scoring.SOFTMAX, Scoring.SIGMOID)
    groups = num_groups if grouped else 1
    return groups, num_experts // groups


def _fused_route_impl(router_logits: torch.Tensor, top_k: int, scoring: str, renormalize: bool,
                      num_groups: Optional[int], topk_groups: Optional[int],
                      correction_bias: Optional[torch.Tensor],
                      routed_scaling_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, num_experts = router_logits.shape
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=router_logits.device)
    ids = torch.empty((tokens, top_k), dtype=torch.int32, device=router_logits.device)
    if tokens == 0:
        return weights, ids
    if correction_bias is not None:
        if correction_bias.device != router_logits.device:  # the kernel would read another device's memory
            raise ValueError(f"correction_bias is on {correction_bias.device}, router_logits on {router_logits.device}")
        correction_bias = correction_bias.contiguous()
    groups, group_size = _group_layout(num_experts, Scoring(scoring), num_groups)
    block_g, block_gs = next_pow2(groups), next_pow2(group_size)
    tile = block_g * block_gs
    if interpreting():
        rows = max(1, min(next_pow2(tokens), _INTERPRETER_TILE // tile))
    elif tokens <= _ONE_ROW_MAX_TOKENS:
        # Decode: one row per program, so the k rounds of argmax run on every row at once (more
        # programs, each a short chain of in-warp reductions) instead of one after another per tile.
        rows = 1
    else:
        rows = max(1, min(next_pow2(tokens), _GPU_TILE // tile))
    launch(_fused_route_kernel, (-(-tokens // rows),),
           (router_logits, correction_bias if correction_bias is not None else router_logits, weights, ids,
            tokens, router_logits.stride(0), router_logits.stride(1), float(routed_scaling_factor)),
           dict(TOP_K=top_k, SCORING=_SCORING_CODE[scoring], RENORMALIZE=bool(renormalize),
                HAS_BIAS=correction_bias is not None,
                NUM_GROUPS=groups, GROUP_SIZE=group_size, TOPK_GROUPS=topk_groups if groups > 1 else 1,
                TOP2_SUM=correction_bias is not None and group_size >= 2,
                ROWS=rows, BLOCK_G=block_g, BLOCK_GS=block_gs, BLOCK_K=next_pow2(top_k),
                PRECISE=not interpreting()),
           num_warps=min(8, max(1, rows * tile // 256)), num_stages=3)
    return weights, ids


@torch.library.custom_op("moekit::fused_route", mutates_args=())
def _fused_route_op(router_logits: torch.Tensor, top_k: int, scoring: str, renormalize: bool,
                    num_groups: Optional[int], topk_groups: Optional[int],
                    correction_bias: Optional[torch.Tensor],
                    routed_scaling_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _fused_route_impl(router_logits, top_k, scoring, renormalize, num_groups, topk_groups,
                             correction_bias, routed_scaling_factor)


@_fused_route_op.register_fake
def _(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias, routed_scaling_factor):
    shape = (router_logits.shape[0], top_k)
    return router_logits.new_empty(shape, dtype=torch.float32), router_logits.new_empty(shape, dtype=torch.int32)


def fused_route(router_logits: torch.Tensor, top_k: int, scoring: Scoring | str, renormalize: bool = True,
                num_groups: Optional[int] = None, topk_groups: Optional[int] = None,
                correction_bias: Optional[torch.Tensor] = None,
                routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] (fp32/bf16/fp16) -> (topk_weights fp32 [T, k], topk_ids int32 [T, k]), both
    contiguous. The arguments are those of ``moekit.route`` after its checks."""
    scoring = scoring.value if isinstance(scoring, Scoring) else scoring
    args = (router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias,
            float(routed_scaling_factor))
    if torch.compiler.is_compiling():  # torch.compile sees one opaque op with a fake implementation
        return torch.ops.moekit.fused_route(*args)
    return _fused_route_impl(*args)  # eager: skip the dispatcher's per-call overhead
