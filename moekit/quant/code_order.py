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
q`` (q < 4, c < 2, h < 2), pair ``j = 2c + h`` of the word, nibble by nibble: pair j's low code
(its even K column) is nibble j of the word (bits 4j..4j+3), its high code nibble 4 + j. Why the
nibbles move too (sm90 SASS): a bf16 pair register then comes out of the whole word by one shift
and one mask for both of its halves (the pair's codes lie 16 bits apart, as its two values do),
where a byte per pair first had to be taken out of the word (a PRMT per pair) and spread apart
(paired_dequant.py). A run lies inside one scale group when groups hold at least
32 codes or span K (w4a16 g32/g64/g128 and per channel, mxfp4), so scales, zero points and
everything else keep their plain layout. nvfp4's 16-code groups, act-order (g_idx) and K not a
multiple of 32 stay plain.

The layer converts its codes in place when the Triton backend is chosen and back when another is
(oracle/quantized.convert_weights); its state dict always holds the plain order. Tensors moekit
does not own (``moekit.fused_moe``'s arguments, a Hugging Face module's weights) are never reordered:
every reader takes either order, by ``QuantizedMatrix.mma_order``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from moekit.quant.spec import QuantizedMatrix, QuantSpec

RUN_BYTES = 16
RUN_CODES = 2 * RUN_BYTES

# byte p of a run in MMA order holds (the nibbles of) plain byte _PLAIN_OF_STORED[p]
_PLAIN_OF_STORED = [8 * c + 4 * h + q for q in range(4) for c in range(2) for h in range(2)]
_STORED_OF_PLAIN = sorted(range(RUN_BYTES), key=_PLAIN_OF_STORED.__getitem__)


def mma_order_fits_rows(spec: QuantSpec, k: int) -> bool:
    """Whether rows of ``k`` codes of ``spec`` can be kept in MMA order (act-order aside): packed
    4-bit codes, runs inside scale groups, whole runs per row."""
    return (spec.weight_only and spec.weight.packed and (spec.group_k == 0 or spec.group_k >= RUN_CODES)
            and k % RUN_CODES == 0)


def mma_order_fits(spec: QuantSpec, m: QuantizedMatrix) -> bool:
    """Whether ``m``'s codes can be kept in MMA order: mma_order_fits_rows, and no act-order."""
    return mma_order_fits_rows(spec, 2 * m.data.shape[-1]) and m.g_idx is None


def to_mma_order(data: torch.Tensor) -> torch.Tensor:
    """Packed codes [..., K/2] in plain order -> the same codes in MMA order (a new tensor)."""
    return _nibbles_to_words(_permute_runs(data, _PLAIN_OF_STORED))


def to_plain_order(data: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_mma_order``."""
    return _permute_runs(_words_to_nibbles(data), _STORED_OF_PLAIN)


def _nibbles_to_words(pairs: torch.Tensor) -> torch.Tensor:
    """Bytes [..., 4n] of two codes each (pair j of a word: low code, high code) -> words whose
    nibble j holds pair j's low code and nibble 4 + j its high code."""
    p = pairs.reshape(*pairs.shape[:-1], -1, 4).to(torch.int32) & 0xFF
    low, high = p & 0xF, p >> 4
    words = [low[..., 0] | low[..., 1] << 4, low[..., 2] | low[..., 3] << 4,
             high[..., 0] | high[..., 1] << 4, high[..., 2] | high[..., 3] << 4]
    return torch.stack(words, -1).to(pairs.dtype).reshape(pairs.shape)


def _words_to_nibbles(words: torch.Tensor) -> torch.Tensor:
    """The inverse of ``_nibbles_to_words``."""
    w = words.reshape(*words.shape[:-1], -1, 4).to(torch.int32) & 0xFF
    low = [w[..., 0] & 0xF, w[..., 0] >> 4, w[..., 1] & 0xF, w[..., 1] >> 4]
    high = [w[..., 2] & 0xF, w[..., 2] >> 4, w[..., 3] & 0xF, w[..., 3] >> 4]
    pairs = [lo | hi << 4 for lo, hi in zip(low, high)]
    return torch.stack(pairs, -1).to(words.dtype).reshape(words.shape)


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
