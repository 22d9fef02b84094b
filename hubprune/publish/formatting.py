"""How hubprune writes numbers for people: scores and their changes, byte and parameter counts, times, energy.

One rule for each kind of number, used by the cards, the collection notes and the CLI's summaries alike, so
that the same measurement reads the same wherever it is shown. Pure functions of numbers, except
fraction_tasks, which decides one format per benchmark over a whole family.
"""

from __future__ import annotations

from hubprune.publish.results import ModelResults, benchmarks


def arrow(higher_is_better: bool | None) -> str:
    """↑ for a metric where higher is better, ↓ for lower, nothing when the direction is unknown."""
    return {True: "↑", False: "↓"}.get(higher_is_better, "")  # type: ignore[arg-type]


def metric_text(metric: str, higher_is_better: bool | None) -> str:
    """A metric as column headings name it: "acc ↑" for lm-eval's "acc,none" (the filter left out)."""
    return f"{metric.split(',')[0]} {arrow(higher_is_better)}"


def is_fraction(metric: str, higher_is_better: bool | None, values: list[float]) -> bool:
    """Whether a metric reads as an accuracy-like fraction: shown as a percentage, with changes in points."""
    return "perplexity" not in metric and higher_is_better is not False and all(0.0 <= v <= 1.0 for v in values)


def fraction_tasks(models: list[ModelResults]) -> set[str]:
    """Tasks whose metric is an accuracy-like fraction. Decided once per task over every model, so one column
    never mixes formats: a perplexity (by name) or a lower-is-better metric is never one, nor is a metric that
    any model reports outside [0, 1]."""
    return {
        score.task
        for score in benchmarks(models)
        if is_fraction(
            score.metric, score.higher_is_better, [m.scores[score.task].value for m in models if score.task in m.scores]
        )
    }


def score_text(value: float | None, fraction: bool) -> str:
    if value is None:
        return "not measured"
    if fraction:
        return f"{value * 100:.1f} %"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def change_text(value: float | None, base: float | None, fraction: bool) -> str:
    """The change against the base: points for fractions, a factor for a metric that grew many times over (a
    perplexity), else a relative percentage."""
    if value is None or base is None:
        return "no base"
    if fraction:
        return f"{(value - base) * 100:+.1f} pts"
    if base <= 0 or value <= 0:
        return "n/a" if base == 0 else f"{(value - base) / abs(base) * 100:+.1f} %"
    if value / base >= 2:
        return f"{value / base:,.1f}× base"
    return f"{(value - base) / base * 100:+.1f} %"


def score_with_change(value: float | None, base: float | None, fraction: bool, *, is_base: bool = False) -> str:
    """The score, and its change against the base when both were measured: "75.0 % (+25.0 pts)"."""
    text = score_text(value, fraction)
    if value is None or is_base or base is None:
        return text
    return f"{text} ({change_text(value, base, fraction)})"


def stderr_text(stderr: float, fraction: bool) -> str:
    """A standard error to follow its score_text: in points for fractions."""
    return f" ± {stderr * 100:.1f}" if fraction else f" ± {stderr:.3g}"


def params_text(count: int) -> str:
    """A parameter count to 4 significant digits: "134.5M"."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.4g}{unit}"
    return str(count)


def bytes_text(count: int) -> str:
    """A size in decimal units to 4 significant digits: "538.1 MB"."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.4g} {unit}"
    return f"{count} B"


def ratio_text(value: float, reference: float) -> str:
    """A figure against the base's: "(0.65× base)"."""
    return f"({value / reference:.2f}× base)"


def timed_text(value: float, unit: str, reference: float | None) -> str:
    """A time or rate: 1 decimal from 10 up, else 3 significant digits; against the base's when one is given."""
    text = f"{value:.1f} {unit}".strip() if value >= 10 else f"{value:.3g} {unit}".strip()
    if reference:
        text += f" {ratio_text(value, reference)}"
    return text


def energy_text(joules_per_token: float | None, method: str | None, source: str | None) -> str:
    """Energy per token and where it came from: "0.0123 J (estimated)", "0.00456 J (RAPL)"."""
    if joules_per_token is None:
        return "not measured"
    text = f"{joules_per_token:.3g} J"
    if method == "estimated":
        return text + " (estimated)"
    return text + f" ({'measured' if source is None else source})"
