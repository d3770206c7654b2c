"""``--plot`` with ``--quant``: per shape, µs against tokens for the unquantized forward and each
scheme (log-log, with the unquantized floor), and each scheme's speedup over the unquantized
forward against tokens (1× drawn: above it the quantized forward is faster)."""

from __future__ import annotations

from moekit.bench.results import MOEKIT, ShapeResult

_MARKERS = "os^vD<>px*h"


def draw_quant_shape(shape: ShapeResult, dtype: str, time_ax, speedup_ax) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    title = f"{shape.model}: E{shape.num_experts} k{shape.top_k} H{shape.hidden} I{shape.intermediate}"
    cells = [c for c in shape.cells if c.us(MOEKIT) is not None]
    if cells:
        time_ax.plot([c.tokens for c in cells], [c.us(MOEKIT) for c in cells], "k-", marker="o", linewidth=2,
                     label=f"{dtype} ({shape.backend})")
    floor = [(c.tokens, c.floor_us) for c in shape.cells if c.floor_us is not None]
    if floor:
        time_ax.plot(*zip(*floor), "k-", linewidth=2.5, alpha=0.2, label=f"{dtype} roofline floor")
    schemes = list(dict.fromkeys(s for c in shape.cells for s in c.quant))
    for i, scheme in enumerate(schemes):
        timed = [c for c in shape.cells if scheme in c.quant and c.quant[scheme].us is not None]
        if not timed:
            continue
        backend = shape.quant_backends.get(scheme, "?")
        label = scheme if backend == "triton" else f"{scheme} ({backend}!)"
        style = dict(marker=_MARKERS[i % len(_MARKERS)], linestyle="-" if backend == "triton" else ":")
        tokens = [c.tokens for c in timed]
        time_ax.plot(tokens, [c.quant[scheme].us for c in timed], label=label, **style)
        speedups = [c.speedup_vs_unquantized(scheme) for c in timed]
        speedup_ax.plot(tokens, [float("nan") if s is None else s for s in speedups], label=label, **style)
    speedup_ax.axhline(1.0, color="k", linewidth=1, alpha=0.5)
    time_ax.set(yscale="log", ylabel="median µs (lower is better)")
    time_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    time_ax.yaxis.set_minor_formatter(NullFormatter())
    speedup_ax.set(ylabel=f"speedup vs {dtype} (higher is better)")
    speedup_ax.set_ylim(bottom=0)
    ticks = sorted({c.tokens for c in shape.cells})
    for ax in (time_ax, speedup_ax):
        ax.set(xscale="log", xlabel="tokens", title=title)
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xticks([], minor=True)
        ax.grid(True, which="major", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
