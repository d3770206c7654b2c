"""The ``--quant`` table of one shape: per token count the unquantized forward, then each scheme's,
with the bytes its floor counts (packed weights actually read), % of that floor, the speedup over
the unquantized forward, the error against the reference on the dequantized weights, and the
backend each quantized layer chose (a "reference" there is a fallback, not a kernel: shown in red)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from moekit.bench.results import MOEKIT, Cell, QuantCell, ShapeResult, VariantResult

KERNEL_BACKENDS = ("triton",)  # a quantized layer on anything else is not running a kernel of ours


def quant_shape_report(shape: ShapeResult, dtype: str, notes) -> Group:
    """``notes``: the shape's numbered notes (report._Notes), shared with its other table."""
    table = Table(title=f"{shape.model}: quantized forwards against the {dtype} one (routing excluded, graph "
                        f"replay, same float weights)", title_justify="left")
    for header in ("tokens", "scheme", "backend", "MB read", "floor µs", "µs (graph)", "% floor",
                   f"speedup vs {dtype}", "rel err", "tol", "pass"):
        table.add_column(header, justify="right")
    for scheme, reason in shape.quant_skipped.items():
        notes.mark(scheme, None, f"not applicable to this shape, not run: {reason}")
    for scheme, error in shape.quant_errors.items():
        notes.mark(scheme, None, f"layer not built: {error}")
    for scheme, backend in shape.quant_backends.items():
        if backend not in KERNEL_BACKENDS:
            notes.mark(scheme, None, f"the oracle chose the {backend!r} backend: a fallback, not a kernel")
    for i, cell in enumerate(shape.cells):
        if i:
            table.add_section()
        table.add_row(*_unquantized_row(cell, shape.backend, dtype, notes))
        for scheme, q in cell.quant.items():
            table.add_row(*_quant_row(cell, q, shape.quant_backends.get(scheme), notes))
    return Group(table)


def _unquantized_row(cell: Cell, backend: str | None, dtype: str, notes) -> list[Text]:
    tokens = Text(str(cell.tokens))
    if cell.error is not None:
        mark = notes.mark("cell", cell.tokens, cell.error)
        return [tokens, Text(dtype), Text(backend or "-"), Text(f"error {mark}", style="red"), *[Text("")] * 6,
                Text("FAIL", style="bold red")]
    v = cell.variants.get(MOEKIT)
    pct = cell.pct_of_floor(MOEKIT)
    return [tokens, Text(dtype), Text(backend or "-"), _megabytes(cell.floor), _floor(cell.floor),
            _time(v, MOEKIT, cell.tokens, notes), _pct(pct), Text("1.00×", style="dim"), _rel(v), Text("0.01"),
            _pass(v is not None and bool(v.passed), v, MOEKIT, cell.tokens, notes)]


def _quant_row(cell: Cell, q: QuantCell, backend: str | None, notes) -> list[Text]:
    tokens = Text(str(cell.tokens))
    shown_backend = Text(backend or "-", style="" if backend in KERNEL_BACKENDS else "bold red")
    if q.error is not None:
        mark = notes.mark(q.scheme, cell.tokens, q.error)
        return [tokens, Text(q.scheme), shown_backend, _megabytes(q.floor), _floor(q.floor),
                Text(f"error {mark}", style="red"), *[Text("")] * 4, Text("FAIL", style="bold red")]
    speedup = cell.speedup_vs_unquantized(q.scheme)
    return [tokens, Text(q.scheme), shown_backend, _megabytes(q.floor), _floor(q.floor),
            _time(q.result, q.scheme, cell.tokens, notes), _pct(q.pct_of_floor),
            Text("-" if speedup is None else f"{speedup:.2f}×"), _rel(q.result),
            Text("-" if q.tolerance is None else f"{q.tolerance:g}"),
            _pass(q.passed, q.result, q.scheme, cell.tokens, notes)]


def _megabytes(floor) -> Text:
    return Text("-" if floor is None else f"{floor.bytes / 1e6:,.1f}")


def _floor(floor) -> Text:
    if floor is None:
        return Text("-")
    rate = f" {floor.matmul_rate}" if floor.bound == "compute" and floor.matmul_rate else ""
    return Text(f"{floor.seconds * 1e6:,.1f} {floor.bound[:3]}{rate}")


def _pct(pct: float | None) -> Text:
    return Text("-" if pct is None else f"{pct:.0f}%")


def _rel(v: VariantResult | None) -> Text:
    return Text("-" if v is None or v.rel_error is None else f"{v.rel_error:.2e}")


def _time(v: VariantResult | None, name: str, tokens: int, notes) -> Text:
    if v is None:
        return Text("-")
    if v.error is not None:
        return Text(f"error {notes.mark(name, tokens, v.error)}", style="red")
    if v.capture_error is not None:  # timed eagerly: not comparable with graph numbers
        mark = notes.mark(name, tokens, f"CUDA-graph capture failed, timed eagerly: {v.capture_error}")
        return Text(f"{v.us:,.1f} eager {mark}", style="yellow")
    return Text(f"{v.us:,.1f}")


def _pass(passed: bool, v: VariantResult | None, name: str, tokens: int, notes) -> Text:
    if passed:
        return Text("PASS", style="bold green")
    if v is not None and v.error is None and v.finite is not None:
        why = "non-finite output" if not v.finite else f"rel err {v.rel_error:.3g} > tolerance"
        notes.mark(name, tokens, f"check failed: {why}")
    return Text("FAIL", style="bold red")
