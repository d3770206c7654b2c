"""Tile configurations of the fused experts kernels: tuned tables per device and shape, and the
default heuristic that serves any shape without one.

A table is a JSON file in ``moekit/triton_ops/configs/`` (written by ``moekit tune``), named by
device, shape and dtype, mapping token counts (buckets) to a config; a call takes the bucket
nearest its token count (in log scale) if it is near enough (MAX_BUCKET_DISTANCE). Both GEMMs
share ``block_m``, the row block of the expert alignment; each has its own N/K tiles, warps and
pipeline depth.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"
# Row blocks of 1, 2 or 4 rows run the weight-only decode GEMV (weight_only_gemv.py), larger ones the
# tensor-core GEMMs: the tiles' block_m says which path runs.
GEMV_MAX_BLOCK_M = 4


@dataclass(frozen=True)
class GemmTiles:
    block_n: int
    block_k: int
    group_m: int = 1  # programs of one N tile walk this many M blocks first (L2 reuse of weights)
    num_warps: int = 4
    num_stages: int = 3
    tma: bool = False  # weight tiles by the tensor-memory accelerator (Hopper) where the tensor allows
    split_k: int = 1  # parts of K in programs of their own, summed after (the decode GEMV only)
    swap_ab: bool = False  # weight-only tensor-core GEMMs: out^T = W @ x^T (weight_only_swapped.py)


@dataclass(frozen=True)
class ExpertsTiles:
    block_m: int
    gemm1: GemmTiles  # x @ w13 -> activation; block_n counts output columns (I), gate and up both
    gemm2: GemmTiles  # act @ w2 -> weighted rows; block_n counts H columns

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> ExpertsTiles:
        return ExpertsTiles(d["block_m"], GemmTiles(**d["gemm1"]), GemmTiles(**d["gemm2"]))


@dataclass(frozen=True)
class TableKey:
    device: str
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    dtype: torch.dtype
    gated: bool = True
    quant: str = "none"  # the weights' quant scheme (moekit/quant); "none" for dtype weights

    def file_name(self) -> str:
        # Letters, digits, '_', '-' and '.' only: the name travels through any file system or tool.
        device = re.sub(r"[^A-Za-z0-9]+", "_", self.device).strip("_")
        dtype = str(self.dtype).removeprefix("torch.")
        gate = "" if self.gated else "-nogate"
        quant = "" if self.quant == "none" else f"-{self.quant}"
        return (f"E{self.num_experts}-k{self.top_k}-H{self.hidden_size}-I{self.intermediate_size}-"
                f"{dtype}{gate}{quant}-{device}.json")


# A tuned bucket serves token counts up to 4x away (log2 distance 2), and every count past the
# table's largest (prefill tiles hold there); a count farther from every bucket (a table tuned at a
# few buckets only) takes the default heuristic rather than tiles measured for another regime.
MAX_BUCKET_DISTANCE = 2


def tiles_for(key: TableKey, num_tokens: int, gemv: bool = True) -> tuple[ExpertsTiles, str]:
    """The tiles for this call, and where they came from ("tuned <file> bucket N" or "default").
    ``gemv=False``: act-order (g_idx) weights, which neither the decode GEMV nor the swapped weight-only
    loop runs: a tuned bucket of the GEMV gives way to the default heuristic's tensor-core tiles, and
    swapped tiles run unswapped."""
    table = load_table(key)
    tokens = max(num_tokens, 1)
    tiles = None
    if table:
        bucket = min(table, key=lambda b: abs(math.log2(b) - math.log2(tokens)))
        near = abs(math.log2(bucket) - math.log2(tokens)) <= MAX_BUCKET_DISTANCE or tokens > max(table)
        if near and (gemv or table[bucket].block_m > GEMV_MAX_BLOCK_M):
            tiles, source = table[bucket], f"tuned {key.file_name()} bucket {bucket}"
    if tiles is None:
        tiles, source = default_tiles(key, num_tokens, gemv), "default heuristic"
    if not gemv and (tiles.gemm1.swap_ab or tiles.gemm2.swap_ab):
        tiles = dataclasses.replace(tiles, gemm1=dataclasses.replace(tiles.gemm1, swap_ab=False),
                                    gemm2=dataclasses.replace(tiles.gemm2, swap_ab=False))
    return tiles, source


def tiles_for_call(device: torch.device, w2_shape, ids_shape, dtype: torch.dtype, gated: bool,
                   quant: str = "none", gemv: bool = True) -> ExpertsTiles:
    """``tiles_for`` from a call's shapes (w2's logical [E, H, I]), looked up once per shape (a dict
    hit on later calls)."""
    shape = (device, tuple(w2_shape), tuple(ids_shape), dtype, gated, quant, gemv)
    tiles = _CALL_TILES.get(shape)
    if tiles is None:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        key = TableKey(name, w2_shape[0], ids_shape[1], w2_shape[1], w2_shape[2], dtype, gated, quant)
        tiles = _CALL_TILES[shape] = tiles_for(key, ids_shape[0], gemv)[0]
    return tiles


_CALL_TILES: dict[tuple, ExpertsTiles] = {}


@functools.lru_cache(maxsize=None)
def load_table(key: TableKey) -> dict[int, ExpertsTiles]:
    path = CONFIG_DIR / key.file_name()
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {int(tokens): ExpertsTiles.from_json(cfg) for tokens, cfg in data["buckets"].items()}


def write_table(key: TableKey, buckets: dict[int, ExpertsTiles], meta: dict, directory: Path = CONFIG_DIR,
                keep_other_buckets: bool = True) -> Path:
    """Write ``buckets`` as ``key``'s table. ``keep_other_buckets``: an existing table's buckets this
    run did not tune stay (tuning the decode buckets must not drop the prefill ones); their entries
    in ``meta["measured_us"]`` are kept too, dated by the table they came from."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / key.file_name()
    entries = {str(t): cfg.to_json() for t, cfg in buckets.items()}
    if keep_other_buckets and path.exists():
        entries, meta = _with_earlier_buckets(json.loads(path.read_text()), entries, meta)
    ordered = dict(sorted(entries.items(), key=lambda item: int(item[0])))
    payload = {"meta": meta, "buckets": ordered}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    load_table.cache_clear()
    _CALL_TILES.clear()
    return path


def _with_earlier_buckets(earlier: dict, entries: dict, meta: dict) -> tuple[dict, dict]:
    """``entries`` and ``meta`` with ``earlier``'s (a table's JSON) other buckets and their measurements."""
    kept = {t: cfg for t, cfg in earlier["buckets"].items() if t not in entries}
    measured = dict(meta.get("measured_us", {}))
    earlier_measured = earlier["meta"].get("measured_us", {})
    for t in kept:
        if t in earlier_measured:
            measured[t] = {"date": earlier["meta"].get("date"), **earlier_measured[t]}
    meta = {**meta, "measured_us": dict(sorted(measured.items(), key=lambda item: int(item[0])))}
    return {**kept, **entries}, meta


def default_tiles(key: TableKey, num_tokens: int, gemv: bool = True) -> ExpertsTiles:
    """Sound tiles for any shape, by the average rows per expert (decode streams weights; prefill
    is a compute-bound grouped GEMM). ``gemv=False``: never the decode GEMV's row blocks."""
    rows_per_expert = num_tokens * key.top_k / key.num_experts
    if key.dtype == torch.float32:  # the interpreter, or fp32 on a GPU: modest tiles
        if key.quant != "none" and gemv and _weight_only(key.quant):  # (codes in MMA order: quant/code_order.py)
            swapped = GemmTiles(64, 64, 1, swap_ab=True)
            return ExpertsTiles(16, swapped, swapped)
        return ExpertsTiles(16, GemmTiles(32, 32), GemmTiles(32, 32))
    if key.quant != "none":
        return _default_quant_tiles(key, num_tokens, gemv)
    if rows_per_expert <= 16:
        return ExpertsTiles(16, GemmTiles(32, 128, 1, 4, 4), GemmTiles(64, 128, 1, 4, 4))
    if rows_per_expert <= 48:
        return ExpertsTiles(32, GemmTiles(64, 128, 1, 4, 3), GemmTiles(64, 128, 1, 4, 3))
    if rows_per_expert <= 160:
        return ExpertsTiles(64, GemmTiles(64, 64, 8, 4, 4), GemmTiles(128, 64, 8, 4, 4))
    return ExpertsTiles(128, GemmTiles(64, 64, 8, 8, 4), GemmTiles(128, 64, 8, 8, 4))


def _weight_only(scheme: str) -> bool:
    from moekit.quant.registry import method_for

    return method_for(scheme).spec.weight_only


def _default_quant_tiles(key: TableKey, num_tokens: int, gemv: bool = True) -> ExpertsTiles:
    """Untuned defaults for quantized weights (16-bit activations; fp32 takes the modest tiles),
    chosen from sm90 builds without spills (registers read from the compiled kernels).

    Decode streams the weights. Weight-only schemes at one row per expert or fewer take the CUDA-core
    GEMV (weight_only_gemv.decode_gemv_tiles). w8a8: 64-wide tiles with 256-wide K steps (fp8-block128
    takes 128) measured best on an H200 (1.1-1.3x faster than 16-wide: narrow tiles made ~1.1 waves of
    programs at DeepSeek-V3, half of the last wave idle).
    Weight-only on tensor cores: the swapped loop (_default_weight_only_tiles); act-order weights
    (g_idx), which it does not run, keep the unswapped loop's tiles: 32/64-wide tiles at decode (a
    sweep on an H200 at Qwen3-30B and gpt-oss shapes, 1 and 16 tokens), the bf16 shapes with 128-wide
    K steps in prefill. w8a8 prefill runs fp8 / int8 tensor cores with
    K steps of 128 (one fp8-block128 scale block); int8 takes 128-row tiles (1.05-1.1x faster than
    64-row ones at Qwen3-30B and DeepSeek-V3), fp8 keeps 64 rows: the per-step fp32 promotion of
    its accumulator makes the larger tiles slower. gemm1's BLOCK_N 128 is one 128-column activation
    group, so fp8-block128 quantizes gemm2's input in gemm1's epilogue (BLOCK_M 64: 128 rows with
    gate and up accumulators and the per-block partial product spill)."""
    from moekit.quant.registry import method_for
    from moekit.quant.spec import ActQuant

    spec = method_for(key.quant).spec
    rows_per_expert = num_tokens * key.top_k / key.num_experts
    if spec.weight_only and gemv:
        from moekit.triton_ops.weight_only_gemv import decode_gemv_tiles

        decode = decode_gemv_tiles(spec, key.num_experts, key.top_k, key.hidden_size, key.intermediate_size,
                                   num_tokens)
        if decode is not None:
            return decode
    if spec.weight_only and gemv:
        return _default_weight_only_tiles(rows_per_expert)
    if rows_per_expert <= 16 and spec.weight_only:  # act-order weights (g_idx): the unswapped loop
        k_step = 64 if spec.weight.packed else 128
        return ExpertsTiles(16, GemmTiles(32, k_step, 1, 4, 2), GemmTiles(64, k_step, 1, 4, 2))
    if rows_per_expert <= 16:  # H200 sweep (fp8-per-channel, 4 shapes, 1 and 16 tokens)
        k_step = 128 if spec.act_group > 0 or spec.group_k > 0 else 256  # one 128-wide scale block
        return ExpertsTiles(16, GemmTiles(64, k_step, 1, 4, 4), GemmTiles(64, k_step, 1, 4, 4))
    if rows_per_expert <= 48:
        return ExpertsTiles(32, GemmTiles(32, 128, 1, 4, 3), GemmTiles(64, 128, 1, 4, 3))
    if spec.act is ActQuant.INT8:  # exact int32 accumulation: 128-row tiles pay off
        return ExpertsTiles(128, GemmTiles(64, 128, 8, 4, 3), GemmTiles(128, 128, 8, 4, 3))
    if not spec.weight_only:
        return ExpertsTiles(64, GemmTiles(128, 128, 8, 8, 3), GemmTiles(128, 128, 8, 8, 3))
    if rows_per_expert <= 160:
        return ExpertsTiles(64, GemmTiles(64, 128, 8, 4, 3), GemmTiles(128, 128, 8, 8, 3))
    return ExpertsTiles(128, GemmTiles(64, 128, 8, 8, 3), GemmTiles(128, 128, 8, 8, 3))


def _default_weight_only_tiles(rows_per_expert: float) -> ExpertsTiles:
    """Weight-only tensor-core tiles: the swapped loop (weight_only_swapped.py), block_n weight rows
    per program on wgmma's M side (64 per warpgroup, so no warpgroup dequantizes another's rows), the
    row block on its N side; K steps of 64-128, cut to one scale group by the kernel (mxfp4's 32 and
    nvfp4's 16 then run four groups per pipeline stage). Registers from sm90 builds, no spills: gemm1
    128 x 128 rows, 8 warps: 241-243; gemm2 128 rows, 4 warps: 199-216."""
    if rows_per_expert <= 48:
        block_m, stages = (16, 4) if rows_per_expert <= 16 else (32, 3)
        g = GemmTiles(64, 128, 1, 4, stages, swap_ab=True)
        return ExpertsTiles(block_m, g, g)
    block_m = 64 if rows_per_expert <= 160 else 128
    return ExpertsTiles(block_m, GemmTiles(128, 64, 8, 8, 3, swap_ab=True), GemmTiles(128, 64, 8, 4, 3, swap_ab=True))


EXPLAINED_TOKENS = (1, 16, 256, 4096)  # the token counts explain() shows the tiles of


def describe_tiles(tiles: ExpertsTiles) -> str:
    """One line of a forward's tiles: which path (decode GEMV or tensor-core row blocks) and each
    GEMM's tile."""
    gemv = tiles.block_m <= GEMV_MAX_BLOCK_M

    def gemm(g: GemmTiles) -> str:
        parts = [f"{g.block_n}x{g.block_k}", f"{g.num_warps} warps"]
        if not gemv:
            parts.append(f"{g.num_stages} stages" + (", TMA" if g.tma else ""))
        if g.split_k > 1:
            parts.append(f"K split in {g.split_k}")
        if g.swap_ab:
            parts.append("swapped (W @ x^T)")
        return ", ".join(parts)

    path = f"decode GEMV, {tiles.block_m}-row blocks" if gemv else f"{tiles.block_m}-row blocks"
    return f"{path}; gemm1 {gemm(tiles.gemm1)}; gemm2 {gemm(tiles.gemm2)}"


def tile_plan(key: TableKey, token_counts=EXPLAINED_TOKENS) -> list[str]:
    """explain()'s lines for the Triton backend: the tiles of each token count and where they come
    from (a tuned table's bucket or the default heuristic)."""
    lines, swapped = [], False
    for tokens in token_counts:
        tiles, source = tiles_for(key, tokens)
        swapped |= tiles.gemm1.swap_ab or tiles.gemm2.swap_ab
        lines.append(f"  {tokens:>5} token{'' if tokens == 1 else 's'}: {describe_tiles(tiles)} ({source})")
    if swapped and key.quant != "none":
        lines += _swapped_numerics(key)
    return lines


def _swapped_numerics(key: TableKey) -> list[str]:
    """A line on how the swapped loop dequantizes this key's codes on the GPU, where it is not the
    fp32 route (paired_dequant.py)."""
    from moekit.quant.code_order import mma_order_fits_rows
    from moekit.quant.registry import method_for
    from moekit.quant.spec import WeightFormat
    from moekit.triton_ops.quant_gemm import PAIRED_OFF, paired_mode

    spec = method_for(key.quant).spec
    if paired_mode(spec, True, key.dtype, True) == PAIRED_OFF.value:
        return []
    dtype = str(key.dtype).removeprefix("torch.")
    if spec.weight is WeightFormat.E2M1:
        scales = f"{spec.scale_format.value} scales exact in {dtype}"
    elif spec.group_k > 0:
        scales = f"group scales rounded to {dtype} first"
    else:
        scales = "the per-channel scale applied in fp32 after the dot"
    codes = "int8 codes" if spec.weight is WeightFormat.INT8 else "4-bit codes"
    order = ""
    if mma_order_fits_rows(spec, key.hidden_size) and mma_order_fits_rows(spec, key.intermediate_size):
        order = "; the layer keeps them in MMA order (quant/code_order.py)"
    return [f"  swapped tiles dequantize {codes} in {dtype} pairs, {scales} (triton_ops/paired_dequant.py){order}"]
