"""PNG plots for the cards: each benchmark, and throughput / memory / energy, against the expansion ratio.

Which panels a family's plots hold is chosen from its results views (plot_panels); drawing them
(render_png) is pure: matplotlib's Agg backend, fixed size and DPI, no timestamp or version in the file, so
the same numbers give the same bytes. This module reads what was measured and measures nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from hubprune.publish.formatting import metric_text
from hubprune.publish.results import BatchFigures, ModelResults, benchmarks

PLOTS_DIR = "plots"  # beside each card
PLOT_FILES = {"benchmarks": "benchmarks.png", "efficiency": "efficiency.png"}
PLOT_TITLES = {
    "benchmarks": "Benchmarks against the expansion ratio",
    "efficiency": "Efficiency against the expansion ratio",
}

# Colours of the base model and of the member a card is about, the same in every panel.
BASE_COLOUR = "#555555"
LINE_COLOUR = "#1f77b4"
HIGHLIGHT_COLOUR = "#d62728"


@dataclass(frozen=True)
class Series:
    """One panel: a value per model against its expansion ratio; the base drawn as a dashed reference line."""

    title: str
    y_label: str
    points: tuple[tuple[float, float], ...]  # (ratio, value) of each measured member
    base: tuple[float, float] | None  # (ratio, value) of the base, when measured
    log_scale: bool = False


def render_png(panels: list[Series], *, highlight_ratio: float | None = None, title: str = "") -> bytes:
    """One PNG with a panel per series; the member at `highlight_ratio` is marked in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = pyplot.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, series in zip(axes.flat, panels):
        _panel(axis, series, highlight_ratio)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    # metadata: drop the Software entry (matplotlib's version) so the bytes depend on the data alone
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    pyplot.close(figure)
    return buffer.getvalue()


def _panel(axis, series: Series, highlight_ratio: float | None) -> None:  # noqa: ANN001 - a matplotlib Axes
    points = sorted(series.points)
    if points:
        xs, ys = zip(*points)
        axis.plot(xs, ys, marker="o", color=LINE_COLOUR, label="members")
    if series.base is not None:
        axis.axhline(series.base[1], color=BASE_COLOUR, linestyle="--", linewidth=1, label="base")
        axis.plot([series.base[0]], [series.base[1]], marker="s", color=BASE_COLOUR)
    for ratio, value in points:
        if highlight_ratio is not None and abs(ratio - highlight_ratio) < 1e-9:
            axis.plot([ratio], [value], marker="o", markersize=11, color=HIGHLIGHT_COLOUR, label="this model")
    if series.log_scale:
        axis.set_yscale("log")
    axis.set_title(series.title, fontsize=10)
    axis.set_xlabel("expansion ratio (MLP width / hidden)")
    axis.set_ylabel(series.y_label)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)


# --- what the cards plot -------------------------------------------------------------------------------------------


def plot_panels(base: ModelResults, members: list[ModelResults]) -> dict[str, list[Series]]:
    """The panels of each plot (PLOT_FILES' kinds), from what was measured; a plot without panels is not drawn."""
    models = [base, *members]
    panels = []
    for column in benchmarks(models):
        task = column.task
        points = tuple((m.ratio, v) for m in members if (v := m.value(task)) is not None)
        reference = (base.ratio, found) if (found := base.value(task)) is not None else None
        values = [v for _, v in points] + ([reference[1]] if reference else [])
        # A perplexity that grew many times over is readable on a log scale only.
        log = "perplexity" in column.metric and min(values) > 0 and max(values) / min(values) > 20
        label = metric_text(column.metric, column.higher_is_better).strip()  # no arrow: no trailing space
        panels.append(Series(task, label, points, reference, log))
    efficiency = []
    sizes = sorted({b.batch_size for m in models if m.profile for b in m.profile.batches})
    for size in sizes:
        efficiency.append(
            _efficiency_series(base, members, size, lambda b: b.decode_tokens_per_s, f"decode tokens/s, batch {size}")
        )
        efficiency.append(
            _efficiency_series(base, members, size, lambda b: b.ttft_s, f"time to first token (s), batch {size}")
        )
    if sizes:
        efficiency.append(_efficiency_series(base, members, sizes[0], _peak_memory_gb, "peak memory (GB)"))
        energy = _efficiency_series(base, members, sizes[0], lambda b: b.joules_per_token, f"J/token, batch {sizes[0]}")
        if energy.points:
            efficiency.append(energy)
    return {"benchmarks": panels, "efficiency": [s for s in efficiency if s.points]}


def plot_refs(panels: dict[str, list[Series]]) -> list[dict[str, str]]:
    """The plots a card shows, with their titles and paths relative to the card."""
    return [
        {"title": PLOT_TITLES[kind], "path": f"{PLOTS_DIR}/{PLOT_FILES[kind]}"} for kind in PLOT_FILES if panels[kind]
    ]


def render_plots(panels: dict[str, list[Series]], highlight: float | None, title: str) -> dict[str, bytes]:
    """file name -> PNG of every plot that has panels, marking the member at ratio `highlight`."""
    return {
        PLOT_FILES[kind]: render_png(series, highlight_ratio=highlight, title=title)
        for kind, series in panels.items()
        if series
    }


def _efficiency_series(
    base: ModelResults,
    members: list[ModelResults],
    size: int,
    figure: Callable[[BatchFigures], float | None],
    title: str,
) -> Series:
    def value(model: ModelResults) -> float | None:
        batch = model.batch(size)
        return None if batch is None else figure(batch)

    points = tuple((m.ratio, v) for m in members if (v := value(m)) is not None)
    reference = value(base)
    return Series(title, title.split(",")[0], points, (base.ratio, reference) if reference is not None else None)


def _peak_memory_gb(batch: BatchFigures) -> float | None:
    return None if batch.peak_memory_bytes is None else batch.peak_memory_bytes / 1e9
