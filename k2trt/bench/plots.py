"""PNG plots of a sweep (matplotlib, Agg backend, no display needed).

- ``throughput.png``: output tokens/s and requests/s against concurrency, one line per ISL/OSL.
- ``latency.png``: TTFT, inter-token latency and request latency p50/p90/p99 against concurrency.
- ``pareto.png``: output tokens/s per GPU against tokens/s per user, each point labelled with its concurrency and
  the Pareto frontier (no other point is better on both axes) drawn through it — the usual way to pick a
  serving operating point.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2trt.bench.results import METRICS, BenchResult, PointResult
from k2trt.fsio import atomic_open

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FILES = {"throughput": "throughput.png", "latency": "latency.png", "pareto": "pareto.png"}
"""Plot name → file name inside the output directory."""

_PCT_STYLE = {"p50": "-", "p90": "--", "p99": ":"}


def _pair_label(isl: int, osl: int) -> str:
    def k(n: int) -> str:
        return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)

    return f"ISL/OSL {k(isl)}/{k(osl)}"


def _series(points: list[PointResult], metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for p in points:
        v = p.metrics.get(metric)
        if p.ok and v is not None:
            xs.append(p.concurrency)
            ys.append(v)
    return xs, ys


def _concurrency_axis(ax: "Axes", levels: list[int]) -> None:
    ax.set_xscale("log", base=2)
    if levels:
        ax.set_xlim(levels[0] / 1.25, levels[-1] * 1.25)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.minorticks_off()
    ax.set_xlabel("concurrency")
    ax.grid(True, alpha=0.3)


def _no_data(ax: "Axes", why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="gray")


def _save(fig: "Figure", path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")


def pareto_front(xy: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The points no other point beats on both coordinates (both maximised), sorted by x.

    Example:
        >>> [t[2] for t in pareto_front([(1, 10, "a"), (2, 5, "b"), (1.5, 4, "c")])]
        ['a', 'b']
    """
    front = [p for p in xy if not any(q[0] >= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1])
                                      for q in xy)]
    return sorted(front, key=lambda p: p[0])


def write_plots(result: BenchResult, out_dir: str | Path) -> dict[str, Path]:
    """Draw the three plots of ``result`` into ``out_dir`` (each written atomically).

    Returns:
        Plot name → path, for the names in ``PLOT_FILES``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = result.by_pair()
    levels = sorted({p.concurrency for p in result.points})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {pair: colors[i % len(colors)] for i, pair in enumerate(groups)}
    gpus = result.spec.gpus
    title = f"{result.provenance.get('model') or 'model'} — {result.spec.endpoint}" \
            f"{' (streaming)' if result.spec.streaming else ''}, {gpus} GPU{'s' if gpus != 1 else ''}"
    paths: dict[str, Path] = {}

    # throughput vs concurrency
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, metric in zip(axes, ("output_tok_s", "requests_s")):
        drawn = False
        for pair, pts in groups.items():
            xs, ys = _series(pts, metric)
            if xs:
                ax.plot(xs, ys, marker="o", color=color[pair], label=_pair_label(*pair))
                drawn = True
        _concurrency_axis(ax, levels)
        ax.set_ylabel(f"{METRICS[metric].label} ({METRICS[metric].unit})")
        ax.set_ylim(bottom=0)
        if drawn:
            ax.legend(fontsize=8)
        else:
            _no_data(ax, "no successful points")
    fig.suptitle(f"Throughput vs concurrency — {title}", fontsize=11)
    paths["throughput"] = out / PLOT_FILES["throughput"]
    _save(fig, paths["throughput"])
    plt.close(fig)

    # latency percentiles vs concurrency
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, prefix, name in zip(axes, ("ttft_ms", "itl_ms", "latency_ms"),
                                ("time to first token", "inter-token latency", "request latency")):
        drawn = False
        for pair, pts in groups.items():
            for pct, style in _PCT_STYLE.items():
                xs, ys = _series(pts, f"{prefix}_{pct}")
                if xs:
                    ax.plot(xs, ys, style, marker="o", markersize=3, color=color[pair])
                    drawn = True
        _concurrency_axis(ax, levels)
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(name, fontsize=10)
        if drawn:
            ax.set_ylim(bottom=0)
        else:
            _no_data(ax, "no data (needs streaming)" if prefix != "latency_ms" else "no successful points")
    handles = [Line2D([], [], color=color[pair], marker="o", label=_pair_label(*pair)) for pair in groups]
    handles += [Line2D([], [], color="black", linestyle=s, label=p) for p, s in _PCT_STYLE.items()]
    axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle(f"Latency percentiles vs concurrency — {title}", fontsize=11)
    paths["latency"] = out / PLOT_FILES["latency"]
    _save(fig, paths["latency"])
    plt.close(fig)

    # throughput per GPU vs per-user speed, with the Pareto frontier
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    drawn = False
    top_x = top_y = 0.0
    for pair, pts in groups.items():
        xy = [(p.metrics["tok_s_per_user"], p.metrics["output_tok_s_per_gpu"], p.concurrency) for p in pts
              if p.ok and p.metrics.get("tok_s_per_user") is not None
              and p.metrics.get("output_tok_s_per_gpu") is not None]
        if not xy:
            continue
        drawn = True
        top_x, top_y = max(top_x, *(x for x, _, _ in xy)), max(top_y, *(y for _, y, _ in xy))
        ax.scatter([x for x, _, _ in xy], [y for _, y, _ in xy], color=color[pair], s=25, zorder=3)
        front = pareto_front(xy)
        ax.plot([x for x, _, _ in front], [y for _, y, _ in front], "-", color=color[pair],
                label=f"{_pair_label(*pair)} (Pareto frontier)")
        for x, y, c in xy:
            ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{METRICS['tok_s_per_user'].label} ({METRICS['tok_s_per_user'].unit})")
    ax.set_ylabel(f"{METRICS['output_tok_s_per_gpu'].label} ({METRICS['output_tok_s_per_gpu'].unit})")
    ax.grid(True, alpha=0.3)
    if drawn:  # headroom so the c=N labels of the extreme points stay inside the axes
        ax.set_xlim(0, top_x * 1.12 or 1)
        ax.set_ylim(0, top_y * 1.12 or 1)
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no successful points")
    ax.set_title(f"Throughput per GPU vs speed per user — {title}", fontsize=11)
    paths["pareto"] = out / PLOT_FILES["pareto"]
    _save(fig, paths["pareto"])
    plt.close(fig)
    return paths
