"""What the command line prints: tables and summaries on stdout, progress and warnings on stderr. Results are
read through hubprune.publish.results' views and written by hubprune.publish.formatting, as the cards do."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click

from hubprune.export.members import MemberFiles
from hubprune.measure.evaluate import EvalOutcome
from hubprune.measure.profile import ModelProfile
from hubprune.progress import Progress
from hubprune.pruning.check import CheckOutcome
from hubprune.pruning.plan import FamilyPlan
from hubprune.publish.cards import CardOutcome
from hubprune.publish.formatting import (
    bytes_text,
    energy_text,
    is_fraction,
    params_text,
    score_text,
    score_with_change,
    stderr_text,
)
from hubprune.publish.push import PushOutcome
from hubprune.publish.results import EvalView, ProfileView

# --- progress ----------------------------------------------------------------------------------------


class ProgressDisplay:
    """Shows the library's Progress reports on stderr: byte counts as a bar per stage, the rest as lines."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}
        _without_weight_loading_bars()

    def __call__(self, event: Progress) -> None:
        if event.unit == "B":
            self._bar(event)
        elif event.unit == "tok":
            self._token_bar(event)
        elif event.status == "warning":
            click.echo(f"warning: {event.message}", err=True)
        elif event.message:
            click.echo(event.message, err=True)

    def _bar(self, event: Progress) -> None:
        from tqdm import tqdm

        bar = self._bars.get(event.stage)
        if bar is None:
            bar = self._bars[event.stage] = tqdm(
                total=event.total, unit="B", unit_scale=True, desc=event.stage, file=sys.stderr, disable=None
            )
        bar.update(event.done - bar.n)

    def _token_bar(self, event: Progress) -> None:
        """Distillation: a bar per item (the data, each member) in tokens, with the loss and rate beside it."""
        from tqdm import tqdm

        key = f"{event.stage}:{event.item}"
        bar = self._bars.get(key)
        if bar is None:
            bar = self._bars[key] = tqdm(
                total=event.total,
                unit="tok",
                unit_scale=True,
                desc=f"{event.stage} {event.item}",
                file=sys.stderr,
                disable=None,
            )
        bar.set_postfix_str(event.message, refresh=False)
        bar.update(event.done - bar.n)
        if event.done >= event.total:
            self._bars.pop(key).close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def _without_weight_loading_bars() -> None:
    """transformers draws a bar for every model it loads (several a member, one per process when distillation is
    launched); hubprune's own lines say what is loading. The download bars of huggingface_hub stay."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    downloads_shown = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # which turns huggingface_hub's off too
    if downloads_shown:
        enable_progress_bars()


@contextlib.contextmanager
def progress_display() -> Iterator[ProgressDisplay]:
    """A ProgressDisplay whose bars are closed however the work ends; what libraries print() (lm-eval does)
    goes to stderr meanwhile, so that stdout holds only hubprune's tables."""
    display = ProgressDisplay()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield display
    finally:
        display.close()


# --- tables -----------------------------------------------------------------------------------------------------


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plan_table(
    plan: FamilyPlan, paths: dict[str, str] | None = None, scores: tuple[str, dict[str, str]] | None = None
) -> str:
    """The base and every member: width, parameters, size, change; with a score column and paths when given."""
    shape = plan.shape
    header = ["member", "target", "ratio", "width", "params", "MLP params", "size", "params vs base"]
    rows = [header + ([scores[0]] if scores else []) + (["path"] if paths else [])]
    base = [
        "(base)",
        "-",
        f"{shape.intermediate_size / shape.hidden_size:.2f}",
        str(shape.intermediate_size),
        params_text(shape.params_total),
        params_text(shape.params_mlp),
        bytes_text(shape.weight_bytes),
        "-",
    ]
    rows.append(base + ([scores[1].get("base", "not measured")] if scores else []) + ([""] if paths else []))
    for m in plan.members:
        change = (m.params_total - shape.params_total) / shape.params_total * 100
        row = [
            m.name,
            m.target.describe(),
            f"{m.ratio:.2f}",
            str(m.intermediate_size),
            params_text(m.params_total),
            params_text(m.params_mlp),
            bytes_text(m.weight_bytes),
            f"{change:+.1f}%",
        ]
        rows.append(
            row + ([scores[1].get(m.name, "not measured")] if scores else []) + ([paths[m.name]] if paths else [])
        )
    return table(rows)


def _views(outcome: EvalOutcome) -> dict[str, EvalView]:
    return {label: EvalView.from_document(document) for label, document in outcome.results.items()}


def _fraction(views: dict[str, EvalView], task: str) -> bool:
    """One format per task over every model, as the cards decide it."""
    scores = [view.tasks[task] for view in views.values() if task in view.tasks]
    return bool(scores) and is_fraction(scores[0].metric, scores[0].higher_is_better, [s.value for s in scores])


def results_table(outcome: EvalOutcome) -> str:
    """Every model's score on every task, with its standard error."""
    views = _views(outcome)
    tasks = [t.task for t in outcome.tasks]
    fractions = {task: _fraction(views, task) for task in tasks}
    rows = [["model", *tasks]]
    for label, view in views.items():
        cells = []
        for task in tasks:
            score = view.tasks.get(task)
            text = score_text(score.value if score else None, fractions[task])
            if score is not None and score.stderr:
                text += stderr_text(score.stderr, fractions[task])
            cells.append(text)
        rows.append([label, *cells])
    return table(rows)


def headline_scores(outcome: EvalOutcome) -> tuple[str, dict[str, str]]:
    """The suite's first task, per model, with its change against the base where the base was measured."""
    views = _views(outcome)
    first = outcome.tasks[0]
    fraction = _fraction(views, first.task)
    base = views["base"].tasks.get(first.task) if "base" in views else None
    scores = {}
    for label, view in views.items():
        score = view.tasks.get(first.task)
        scores[label] = score_with_change(
            score.value if score else None, base.value if base else None, fraction, is_base=label == "base"
        )
    # the metric the results recorded: a task asked for outside the suite has none in the plan
    recorded = next((view.tasks[first.task].metric_name for view in views.values() if first.task in view.tasks), None)
    metric = recorded or first.metric.split(",")[0]
    return (f"{first.task} ({metric})" if metric else first.task), scores


def profile_table(profiles: tuple[ModelProfile, ...]) -> str:
    rows = [["model", "batch", "TTFT", "decode tok/s", "end-to-end", "peak memory", "J/token"]]
    for item in profiles:
        if item.document is None or item.status == "skipped":
            rows.append([item.name, "-", f"not measured: {item.reason}", "", "", "", ""])
            continue
        for line in ProfileView.from_document(item.document).batches:
            memory = bytes_text(line.peak_memory_bytes) if line.peak_memory_bytes else "not measured"
            rows.append(
                [
                    item.name,
                    str(line.batch_size),
                    f"{line.ttft_s * 1000:.0f} ms",
                    f"{line.decode_tokens_per_s:.1f}",
                    f"{line.e2e_s:.2f} s",
                    memory,
                    energy_text(line.joules_per_token, line.energy_method, line.energy_source),
                ]
            )
    return table(rows)


def check_table(outcome: CheckOutcome) -> str:
    rows = [["criterion", "removed", "width", "perplexity", "vs base", "vs random median"]]
    rows.append(["(base)", "0%", "-", f"{outcome.base_perplexity:.4g}", "-", "-"])
    medians = {r.pct: r.perplexity for r in outcome.rows if r.criterion == "random"}
    for row in outcome.rows:
        if row.criterion == "random":
            value = f"{row.perplexity:.4g} [{row.low:.4g}, {row.high:.4g}]"
            versus = "-"
        else:
            value = f"{row.perplexity:.4g}"
            versus = f"{row.perplexity / medians[row.pct]:.3g}x" if row.pct in medians else "-"
        name = row.criterion if row.recovery == "none" else f"{row.criterion} + {row.recovery}"
        ratio = f"{row.perplexity / outcome.base_perplexity:.3g}x"
        rows.append([name, f"{row.pct}%", str(row.width), value, ratio, versus])
    prefix = "".join(outcome.text.get("special_prefix") or [])
    begins = f", each window beginning with {prefix} as the tokenizer does" if prefix else ""
    lines = [table(rows), f"held-out text: {outcome.text['source']}, {outcome.text['tokens']} tokens{begins}"]
    if outcome.calibration:
        lines.append(f"calibration: {outcome.calibration['source']}, {outcome.calibration['tokens']} tokens")
        if outcome.shared_documents == 0:
            lines.append("calibration and held-out texts share no 13-word sequence")
    return "\n".join(lines)


def card_report(outcome: CardOutcome) -> None:
    for warning in outcome.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"cards: {outcome.family_card} and {len(outcome.member_cards)} member cards")


def push_report(outcome: PushOutcome) -> None:
    for name, why in outcome.skipped:
        click.echo(f"skipped {name}: {why}", err=True)
    if outcome.dry_run:
        click.echo("dry run: nothing was sent. A push would create each repo if missing and upload these files")
        click.echo("(files the repo already holds unchanged are skipped, files not listed are deleted from it):")
    rows = [["repo", "status", "files", "size", "commit"]]
    for member in outcome.members:
        size = bytes_text(sum(f.size for f in member.files)) if member.files else "-"
        rows.append([member.repo_id, member.status, str(len(member.files) or "-"), size, member.commit or "-"])
    click.echo(table(rows))
    if outcome.dry_run:
        if outcome.cards_rendered:
            click.echo("README.md and plots/ of every member would first be rendered again for this namespace.")
        for member in outcome.members:
            click.echo(f"{member.repo_id}:")
            for upload in member.files:
                click.echo(f"  {upload.path}  {bytes_text(upload.size)}")
        if outcome.collection_title:
            click.echo(f"collection {outcome.collection_title!r}, in this order:")
            for repo_id, note in outcome.collection_items:
                click.echo(f"  {repo_id}: {note}")
        return
    if outcome.collection_url:
        click.echo(f"collection: {outcome.collection_url}")
    click.echo(f'load one: AutoModelForCausalLM.from_pretrained("{outcome.members[0].repo_id}")')


def gguf_table(members: list[MemberFiles]) -> str:
    """Every GGUF file written or found: member, type, size, seconds to write, and tensors kept in F16."""
    rows = [["member", "type", "file", "size", "seconds", "kept in F16"]]
    for member in members:
        for made in member.files:
            seconds = f"{made.seconds:.1f}" if made.kind in member.written else "(earlier)"
            rows.append(
                [member.member, made.kind, made.file, bytes_text(made.bytes), seconds, str(len(made.unquantized))]
            )
    return table(rows)
