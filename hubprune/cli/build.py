"""`plan`, `prune`, `build-family` and `check-criteria`: parse, call one library function, print."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from hubprune.cli import output
from hubprune.cli.export import gguf_option
from hubprune.cli.options import (
    StagedCommand,
    option,
    settings_options,
    typed_command,
)
from hubprune.cli.prune_options import (
    SOURCE_HELP,
    family_target_options,
    member_target_options,
    prune_options,
    revision_option,
    runtime_options,
    source_argument,
)
from hubprune.device import RuntimeSettings
from hubprune.export.members import check_gguf_source, export_gguf, source_gguf_of
from hubprune.measure.efficiency import ProfileSettings
from hubprune.measure.evaluate import EvalSettings
from hubprune.pipeline import run_family
from hubprune.pruning.check import CheckSettings, check_criteria
from hubprune.pruning.family import PruneSettings, make_plan, prune_one
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.publish.cards import CardSettings
from hubprune.publish.formatting import bytes_text


@click.command(cls=StagedCommand, epilog=SOURCE_HELP)
@source_argument
@family_target_options
@option("--multiple-of", stage="widths", type=click.IntRange(min=1), help="Round every width to a multiple of N.")
@revision_option
def plan(source: str | None, targets: list[Target], multiple_of: int | None, revision: str | None) -> None:
    """Print the members a build would write (width, parameters, size); write nothing."""
    _, family_plan = make_plan(open_source(source, revision=revision), targets, multiple_of)
    click.echo(output.plan_table(family_plan))


@click.command(cls=StagedCommand, epilog=SOURCE_HELP)
@source_argument
@option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="New folder to write.")
@member_target_options
@prune_options
@gguf_option
@runtime_options("device", "max_memory")
@revision_option
def prune(
    source: str | None,
    out: Path,
    target: Target,
    prune_settings: PruneSettings,
    gguf_types: tuple[str, ...],
    runtime: RuntimeSettings,
    revision: str | None,
) -> None:
    """Write one pruned checkpoint."""
    with output.progress_display() as show:
        checkpoint = open_source(source, revision=revision)
        if gguf_types:  # an architecture or tokenizer GGUF cannot hold is refused before the pruning
            check_gguf_source(checkpoint)
        member = prune_one(checkpoint, out, target, prune_settings, runtime, on_progress=show)
        written = (
            export_gguf(out, gguf_types, source=source_gguf_of(checkpoint), on_progress=show) if gguf_types else []
        )
    if written:
        click.echo(output.gguf_table(written))
    click.echo(
        f"wrote {out}: intermediate size {member.intermediate_size} (ratio {member.ratio:.2f}), "
        f"{member.params_total / 1e6:.2f}M parameters, {bytes_text(member.weight_bytes)}"
    )


@click.command("build-family", cls=StagedCommand, epilog=SOURCE_HELP)
@source_argument
@option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Family folder.")
@family_target_options
@prune_options
@gguf_option
@revision_option
@option("--force", is_flag=True, help="Write into a non-empty folder that is not a hubprune family.")
@option("--skip-eval", is_flag=True, help="Do not run the benchmarks stage.")
@option("--skip-profile", is_flag=True, help="Do not run the efficiency profiling stage.")
@option(
    "--check-criteria",
    "check_first",
    stage="check",
    is_flag=True,
    help="First compare the criterion with random pruning (3 seeds) at every width; the table goes in the cards.",
)
@runtime_options()
@settings_options(EvalSettings, "eval", "eval_settings")
@settings_options(ProfileSettings, "profile", "profile_settings")
@settings_options(CardSettings, "card", "card_settings")
def build_family_command(
    source: str | None,
    out: Path,
    targets: list[Target],
    prune_settings: PruneSettings,
    gguf_types: tuple[str, ...],
    runtime: RuntimeSettings,
    revision: str | None,
    force: bool,
    skip_eval: bool,
    skip_profile: bool,
    check_first: bool,
    eval_settings: EvalSettings,
    profile_settings: ProfileSettings,
    card_settings: CardSettings,
) -> None:
    """Prune at every width in one streaming pass and write the family with its manifest (family.json), then
    benchmark and profile the base and every member and render the model cards."""
    with output.progress_display() as show:
        outcome = run_family(
            source,
            out,
            targets,
            prune_settings,
            runtime=runtime,
            evaluation=None if skip_eval else eval_settings,
            profile=None if skip_profile else profile_settings,
            cards=card_settings,
            check_first=check_first,
            gguf_types=gguf_types,
            revision=revision,
            force=force,
            command=typed_command(),
            on_progress=show,
        )
    if outcome.check is not None:
        click.echo(output.check_table(outcome.check))
    scores = None
    if outcome.evaluation is not None:
        click.echo(output.results_table(outcome.evaluation))
        scores = output.headline_scores(outcome.evaluation)
    if outcome.profiles is not None:
        click.echo(output.profile_table(outcome.profiles))
    if outcome.gguf:
        click.echo(output.gguf_table(outcome.gguf))
    paths = {m.name: str(out / m.name) for m in outcome.plan.members}
    click.echo(output.plan_table(outcome.plan, paths, scores))
    output.card_report(outcome.cards)
    click.echo(f"manifest: {out / 'family.json'}")
    namespace = card_settings.namespace or "YOUR-HF-NAMESPACE"
    click.echo(f"next, publish it: {shlex.join(['hubprune', 'push', str(out), '--namespace', namespace])}")


@click.command("check-criteria", cls=StagedCommand, epilog=SOURCE_HELP)
@source_argument
@settings_options(CheckSettings, "check", "settings")
@runtime_options("device")
@revision_option
def check_criteria_command(
    source: str | None, settings: CheckSettings, runtime: RuntimeSettings, revision: str | None
) -> None:
    """Perplexity on held-out text of the model pruned by each criterion, every layer, against random pruning
    (median and range over the seeds); warns about any criterion that does worse than random. With --recover,
    each criterion is measured with and without recovery."""
    with output.progress_display() as show:
        outcome = check_criteria(open_source(source, revision=revision), settings, runtime, on_progress=show)
    click.echo(output.check_table(outcome))
    for warning in outcome.warnings():
        click.echo(f"warning: {warning}", err=True)
