"""PNG plots for the cards: each benchmark, and throughput / memory / energy, against the expansion ratio.

matplotlib's Agg backend, fixed size and DPI, no timestamp or version in the file, so the same numbers give the
same bytes. Pure drawing: callers pass what to plot, this module measures nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

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
