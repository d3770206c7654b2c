"""Rich tables of a run (setup and ceilings, then one table per shape, each with numbered notes for
refusals, errors and failed captures; with ``--quant`` the shape's quant table, quant_report.py)
and its JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from moekit.bench.quant_report import quant_shape_report
from moekit.bench.results import (GROUPED_MM, HF_LOOP, LABELS, MOEKIT, MOEKIT_ROUTING, BenchResults, Cell, ShapeResult,
                                  short_dtype)


def render(results: BenchResults, console: Console) -> None:
    console.print(setup_table(results))
    for shape in results.shapes:
        console.print(shape_report(shape, results))


def write_json(results: BenchResults, path: str | Path) -> None:
    text = json.dumps(results.to_dict(), indent=2, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def setup_table(results: BenchResults) -> Table:
    env = results.environment
    table = Table(title="moekit bench", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("")
    device = env.get("device", "?")
    if "compute_capability" in env:
        device += f" (sm {env['compute_capability']}, {env['sm_count']} SMs, {env['memory_gib']} GiB)"
    commit = env.get("moekit_commit") or "unknown commit"
    if env.get("moekit_source"):
        commit += f", source {env['moekit_source']}"
    rows = [
        ("device", device),
        ("software", f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
                     f"python {env.get('python')}"),
        ("moekit", f"{env.get('moekit')} ({commit})"),
        ("date", str(env.get("date"))),
        ("dtype", results.dtype),
        ("inputs", f"{results.input_sets} sets of tokens and routing, rotated between timed runs"),
    ]
    if results.timing:
        t = results.timing
        rows.append(("timing", f"median of triton.testing.do_bench (L2 flushed before each run), warmup "
                               f"{t['warmup_ms']} ms ({t['eager_warmup_ms']} ms eager), runs for {t['rep_ms']} ms"))
    c = results.ceilings
    if c is not None:
        rows += [
            ("bandwidth", f"{c.bandwidth / 1e12:.2f} TB/s (1 GiB copy {c.copy_bytes_per_s / 1e12:.2f}, "
                          f"read-only sum {c.read_bytes_per_s / 1e12:.2f}; the better is used)"),
            ("matmul", f"{c.matmul_flops_per_s / 1e12:.0f} TFLOP/s ({c.matmul_dtype} 8192³ torch.mm)"),
        ]
        if c.fp8_flops_per_s is not None:
            rows.append(("fp8 matmul", f"{c.fp8_flops_per_s / 1e12:.0f} TFLOP/s (e4m3 8192³ torch._scaled_mm)"))
        if c.int8_ops_per_s is not None:
            rows.append(("int8 matmul", f"{c.int8_ops_per_s / 1e12:.0f} TOP/s (8192³ torch._int_mm)"))
        for kind, error in (c.low_precision_errors or {}).items():
            rows.append((f"{kind} matmul", f"not measured ({error}); its schemes' floors use the "
                                           f"{c.matmul_dtype} rate"))
    if results.quant:
        rows.append(("quant", f"{', '.join(results.quant)}: each layer quantized from the {results.dtype} layer's "
                              "weights; floors from the packed bytes read"))
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


def shape_report(shape: ShapeResult, results: BenchResults | None = None) -> Group | Text:
    title = shape.describe() + (f"; layer backend: {shape.backend}" if shape.backend else "")
    if shape.error is not None:
        return Text(f"{title}\n  not run: {shape.error}", style="red")
    notes = _Notes()
    parts = []
    quant = results is not None and bool(results.quant)
    baselines = any(name in c.variants for c in shape.cells for name in (MOEKIT_ROUTING, GROUPED_MM, HF_LOOP))
    if baselines or not quant:  # with --quant and no baselines the quant table has every number
        table = Table(title=title, title_justify="left")
        for header in ("tokens", "floor µs", "moekit µs (graph)", "% floor", "moekit+routing µs", "grouped_mm µs",
                       "hf loop µs", "speedup vs grouped_mm", "rel err", "pass"):
            table.add_column(header, justify="right")
        for cell in shape.cells:
            table.add_row(*_cell_row(cell, notes))
        parts.append(table)
    if quant:
        if not parts:
            parts.append(Text(title, style="italic"))
        parts.append(quant_shape_report(shape, short_dtype(results.dtype), notes))
    return Group(*parts, *notes.lines())



def _cell_row(cell: Cell, notes: _Notes) -> list[Text]:
    tokens = Text(str(cell.tokens))
    if cell.error is not None:
        mark = notes.mark("cell", cell.tokens, cell.error)
        return [tokens, Text(f"error {mark}", style="red"), *[Text("")] * 7, Text("FAIL", style="bold red")]
    floor = Text(f"{cell.floor_us:,.1f} {cell.floor.bound[:3]}") if cell.floor is not None else Text("-")
    pct = cell.pct_of_floor(MOEKIT)
    speedup = cell.speedup_vs_grouped_mm()
    moekit = cell.variants.get(MOEKIT)
    rel = Text("-") if moekit is None or moekit.rel_error is None else Text(f"{moekit.rel_error:.2e}")
    times = {name: _time(cell, name, notes) for name in (MOEKIT, MOEKIT_ROUTING, GROUPED_MM, HF_LOOP)}
    for name in (MOEKIT, MOEKIT_ROUTING):
        v = cell.variants.get(name)
        if v is not None and v.error is None and not v.passed:
            why = "non-finite output" if not v.finite else f"rel err {v.rel_error:.3g} > tolerance"
            notes.mark(name, cell.tokens, f"check failed: {why}")
    return [
        tokens, floor, times[MOEKIT], Text("-" if pct is None else f"{pct:.0f}%"), times[MOEKIT_ROUTING],
        times[GROUPED_MM], times[HF_LOOP], Text("-" if speedup is None else f"{speedup:.2f}×"), rel,
        Text("PASS", style="bold green") if cell.passed else Text("FAIL", style="bold red"),
    ]


def _time(cell: Cell, name: str, notes: _Notes) -> Text:
    v = cell.variants.get(name)
    if v is None:
        return Text("-")
    if v.error is not None:
        refused = v.error.startswith("refused")
        word = "refused" if refused else "error"
        return Text(f"{word} {notes.mark(name, cell.tokens, v.error)}", style="yellow" if refused else "red")
    if v.capture_error is not None:  # a graph variant timed eagerly: not comparable with graph numbers
        mark = notes.mark(name, cell.tokens, f"CUDA-graph capture failed, timed eagerly: {v.capture_error}")
        return Text(f"{v.us:,.1f} eager {mark}", style="yellow")
    return Text(f"{v.us:,.1f}")


class _Notes:
    """Numbered notes, one per distinct (variant, message), listing the token counts it applies to."""

    def __init__(self):
        self._notes: dict[tuple[str, str], list[int]] = {}

    def mark(self, name: str, tokens: int | None, message: str) -> str:
        """``tokens`` None: a note about the whole shape, at no token count."""
        key = (name, message)
        self._notes.setdefault(key, [])
        if tokens is not None and tokens not in self._notes[key]:
            self._notes[key].append(tokens)
        return f"[{list(self._notes).index(key) + 1}]"

    def lines(self) -> list[Text]:
        return [Text(f"[{i}] {LABELS.get(name, name)}{_at(tokens)}: {message}")
                for i, ((name, message), tokens) in enumerate(self._notes.items(), start=1)]


def _at(tokens: list[int]) -> str:
    return f" at T={', '.join(map(str, tokens))}" if tokens else ""
