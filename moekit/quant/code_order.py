"""The order of packed 4-bit codes within a row that the Triton backend keeps ("MMA order").

Why (sm90 SASS of the swapped tensor-core loop, weight_only_swapped.py): a thread's A-operand
registers of Hopper's wgmma hold, for each of its weight rows, the K-column pairs (2q, 2q + 1) and
(2q + 8, 2q + 9) of every 16 columns, q = lane % 4: in the plain order (formats.pack_nibbles, a
byte per pair) bytes q and q + 4 of every 8. Read from shared memory into that layout, a tile of
plain bytes took one LDS.U8 per byte (64 per K step of Mixtral's gemm1 at 128 x 128, and 56 bytes
of spills). In MMA order each run of RUN_BYTES bytes (32 codes) is stored thread by thread: the
four bytes a thread needs lie together, so the tile comes in by wide loads and the kernel puts the
bytes back in plain order with a reshape and a permute, which Triton lowers to nothing (same build:
539 instructions per step instead of 620, no spills; gemm2 140 registers instead of 192).

Within a run, stored bytes ``4q .. 4q + 3`` (thread q's 32-bit word) hold the plain bytes ``8c + 4h +
q`` (q < 4, c < 2, h < 2) as pairs ``j = 2c + h`` of the word, nibble by nibble: byte 2i holds the
low codes (even K columns) of pairs 2i and 2i + 1, byte 2i + 1 their high codes. Why the nibbles
move too (sm90 SASS, TTGIR): Triton hands inline PTX four of a thread's bytes at once (``pack=4``)
in the wgmma operand's register order, which is bytes 2i and 2i + 1 of the thread's words of rows r
and r + 8: [r 2i, r+8 2i, r 2i+1, r+8 2i+1]. With this order each pair's two codes lie 16 bits
apart in that register, so one shift and one mask make a pair's two 16-bit values at once
(paired_dequant.py), where a byte per pair first had to be taken out (a PRMT per pair) and spread
apart. A run lies inside one scale group when groups hold at least
32 codes or span K (w4a16 g32/g64/g128 and per channel, mxfp4), so scales, zero points and
everything else keep their plain layout. nvfp4's 16-code groups put two groups in a run: pairs 0
and 1 of each word belong to the first, pairs 2 and 3 to the second, and the readers pick a scale
per pair (the swapped loop reads a scale word's four groups, two runs, per step; the decode GEMV
folds each word's first and last four codes with their own scale). Experimental (not yet run on
a GPU): the layer keeps nvfp4 codes in MMA order only when MOEKIT_EXPERIMENTAL_NVFP4_MMA_ORDER=1,
and only for rows of whole scale words (64 codes). Act-order (g_idx) and K not a multiple of 32
stay plain.

The layer converts its codes in place when the Triton backend is chosen and back when another is
(oracle/quantized.convert_weights); its state dict always holds the plain order. Tensors moekit
does not own (``moekit.fused_moe``'s arguments, a Hugging Face module's weights) are never reordered:
every reader takes either order, by ``QuantizedMatrix.mma_order``.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from moekit.quant.spec import QuantizedMatrix, QuantSpec

RUN_BYTES = 16
RUN_CODES = 2 * RUN_BYTES

# byte p of a run in MMA order holds (the nibbles of) plain byte _PLAIN_OF_STORED[p]
_PLAIN_OF_STORED = [8 * c + 4 * h + q for q in range(4) for c in range(2) for h in range(2)]
_STORED_OF_PLAIN = sorted(range(RUN_BYTES), key=_PLAIN_OF_STORED.__getitem__)


NVFP4_MMA_ORDER_FLAG = "MOEKIT_EXPERIMENTAL_NVFP4_MMA_ORDER"


def mma_order_fits_rows(spec: QuantSpec, k: int) -> bool:
    """Whether rows of ``k`` codes of ``spec`` can be kept in MMA order (act-order aside): packed
    4-bit codes, runs inside scale groups, whole runs per row; or (two_group_runs, opted in) runs of
    two 16-code groups in rows of whole four-group scale words."""
    if not (spec.weight_only and spec.weight.packed):
        return False
    if two_group_runs(spec):
        return os.environ.get(NVFP4_MMA_ORDER_FLAG) == "1" and k % (4 * spec.group_k) == 0
    return (spec.group_k == 0 or spec.group_k >= RUN_CODES) and k % RUN_CODES == 0


def two_group_runs(spec: QuantSpec) -> bool:
    """Whether a run of ``spec``'s codes spans two scale groups (nvfp4: groups of 16 e2m1 codes)."""
    return spec.weight_only and spec.weight.packed and spec.group_k == RUN_CODES // 2


def mma_order_fits(spec: QuantSpec, m: QuantizedMatrix) -> bool:
    """Whether ``m``'s codes can be kept in MMA order: mma_order_fits_rows, and no act-order."""
    return mma_order_fits_rows(spec, 2 * m.data.shape[-1]) and m.g_idx is None


def to_mma_order(data: torch.Tensor) -> torch.Tensor:
    """Packed codes [..., K/2] in plain order -> the same codes in MMA order (a new tensor)."""
    return _swap_pair_nibbles(_permute_runs(data, _PLAIN_OF_STORED))


def to_plain_order(data: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_mma_order``."""
    return _permute_runs(_swap_pair_nibbles(data), _STORED_OF_PLAIN)


def _swap_pair_nibbles(data: torch.Tensor) -> torch.Tensor:
    """Bytes [..., 4n] of two codes each (pairs 0-3 of a word: low code, high code) <-> words whose
    bytes 0 and 1 hold pairs 0 and 1 (byte 0 their low codes, byte 1 their high codes: nibbles 0-3
    = 0 lo, 1 lo, 0 hi, 1 hi), bytes 2 and 3 pairs 2 and 3 alike. Within each pair of bytes this
    transposes a 2 x 2 block of nibbles, so it is its own inverse."""
    b = data.reshape(*data.shape[:-1], -1, 4).to(torch.int32) & 0xFF
    out = [b[..., 0] & 0xF | (b[..., 1] & 0xF) << 4, b[..., 0] >> 4 | b[..., 1] & 0xF0,
           b[..., 2] & 0xF | (b[..., 3] & 0xF) << 4, b[..., 2] >> 4 | b[..., 3] & 0xF0]
    return torch.stack(out, -1).to(data.dtype).reshape(data.shape)


def _permute_runs(data: torch.Tensor, order: list[int]) -> torch.Tensor:
    if data.shape[-1] % RUN_BYTES:
        raise ValueError(f"packed rows of {data.shape[-1]} bytes are not whole runs of {RUN_BYTES}")
    runs = data.reshape(*data.shape[:-1], data.shape[-1] // RUN_BYTES, RUN_BYTES)
    index = torch.tensor(order, device=data.device)
    return runs.index_select(-1, index).reshape(data.shape)


def plain(m: QuantizedMatrix) -> QuantizedMatrix:
    """``m`` with its codes in plain order (itself when they are)."""
    if not m.mma_order:
        return m
    return replace(m, data=to_plain_order(m.data), mma_order=False)


def in_mma_order(m: QuantizedMatrix) -> QuantizedMatrix:
    """``m`` with its codes in MMA order (a new tensor; itself when they are)."""
    if m.mma_order:
        return m
    return replace(m, data=to_mma_order(m.data), mma_order=True)
