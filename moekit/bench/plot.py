"""``--plot FILE.png``: per shape, µs against tokens (log-log, with the floor) and % of the floor
against tokens; with ``--quant``, µs and speedup of each scheme (quant_plot.py). matplotlib is imported here only, through its Agg canvas (no display, no pyplot
global state)."""

from __future__ import annotations

from pathlib import Path

from moekit.bench.quant_plot import draw_quant_shape
from moekit.bench.results import LABELS, VARIANTS, BenchResults, ShapeResult, short_dtype

_STYLE = {"moekit": "o-", "moekit_routing": "s--", "grouped_mm": "^-", "hf_loop": "v:"}


def plot_results(results: BenchResults, path: str | Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shapes = [s for s in results.shapes if s.cells]
    rows = max(1, len(shapes))
    fig = Figure(figsize=(12, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2, squeeze=False)
    device = results.environment.get("device", "?")
    quant = f", quant {', '.join(results.quant)}" if results.quant else ""
    fig.suptitle(f"moekit bench, {results.dtype}{quant}, {device}")
    if not shapes:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    for (left, right), shape in zip(axes, shapes):
        if results.quant:
            draw_quant_shape(shape, short_dtype(results.dtype), left, right)
        else:
            _draw_shape(shape, left, right)
    fig.savefig(path, format="png", dpi=110)


def _draw_shape(shape: ShapeResult, time_ax, pct_ax) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    title = f"{shape.model}: E{shape.num_experts} k{shape.top_k} H{shape.hidden} I{shape.intermediate}"
    for name in VARIANTS:
        cells = [c for c in shape.cells if c.us(name) is not None]
        if not cells:
            continue
        tokens = [c.tokens for c in cells]
        pct = [_nan_if_none(c.pct_of_floor(name)) for c in cells]
        label = LABELS[name]
        if any(c.variants[name].capture_error for c in cells):
            label += " (eager: capture failed)"
        time_ax.plot(tokens, [c.us(name) for c in cells], _STYLE.get(name, "o-"), label=label)
        pct_ax.plot(tokens, pct, _STYLE.get(name, "o-"), label=label)
    floor = [(c.tokens, c.floor_us) for c in shape.cells if c.floor_us is not None]
    if floor:
        time_ax.plot(*zip(*floor), "k-", linewidth=2.5, alpha=0.3, label="roofline floor")
    time_ax.set(yscale="log", ylabel="median µs (lower is better)")
    time_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    time_ax.yaxis.set_minor_formatter(NullFormatter())
    pct_ax.set(ylabel="% of floor (higher is better)")
    pct_ax.set_ylim(bottom=0)
    ticks = sorted({c.tokens for c in shape.cells})
    for ax in (time_ax, pct_ax):
        ax.set(xscale="log", xlabel="tokens", title=title)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xticks([], minor=True)
        ax.grid(True, which="major", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")



def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value
