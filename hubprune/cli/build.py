"""`plan`, `prune`, `build-family` and `check-criteria`: parse, call one library function, print."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import click

from hubprune.cli import output
from hubprune.cli.options import (
    HELD_OUT_FILE,
    CommaList,
    StagedCommand,
    card_options,
    option,
    settings_options,
    shared_runtime_options,
    typed_command,
)
from hubprune.cli.prune_options import (
    DEVICE_OPTION,
    RECOVER_OPTION,
    SOURCE_HELP,
    calibration_options,
    distill_options,
    family_target_options,
    member_target_options,
    prune_options,
    revision_option,
    source_argument,
)
from hubprune.measure.efficiency import ProfileSettings
from hubprune.measure.evaluate import EvalSettings
from hubprune.pipeline import run_family
from hubprune.pruning.calibrate import CalibrationSettings
from hubprune.pruning.check import CheckSettings, check_criteria
from hubprune.pruning.family import PruneSettings, make_plan, prune_one
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.publish.cards import CardSettings
from hubprune.publish.formatting import bytes_text
from hubprune.recover.distill import DistillSettings


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
@DEVICE_OPTION
@revision_option
def prune(
    source: str | None, out: Path, target: Target, prune_settings: PruneSettings, device: str, revision: str | None
) -> None:
    """Write one pruned checkpoint."""
    with output.progress_display() as show:
        settings = replace(prune_settings, device=device)
        member = prune_one(open_source(source, revision=revision), out, target, settings, on_progress=show)
    click.echo(
        f"wrote {out}: intermediate size {member.intermediate_size} (ratio {member.ratio:.2f}), "
        f"{member.params_total / 1e6:.2f}M parameters, {bytes_text(member.weight_bytes)}"
    )


@click.command("build-family", cls=StagedCommand, epilog=SOURCE_HELP)
@source_argument
@option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Family folder.")
@family_target_options
@prune_options
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
@settings_options(EvalSettings, "eval", "eval_settings", shared=("device", "dtype"))
@settings_options(ProfileSettings, "profile", "profile_settings", shared=("device", "dtype"))
@shared_runtime_options
@card_options
def build_family_command(
    source: str | None,
    out: Path,
    targets: list[Target],
    prune_settings: PruneSettings,
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
            replace(prune_settings, device=eval_settings.device),  # one device for distillation, eval and profile
            evaluation=None if skip_eval else eval_settings,
            profile=None if skip_profile else profile_settings,
            cards=card_settings,
            check_first=check_first,
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
    paths = {m.name: str(out / m.name) for m in outcome.plan.members}
    click.echo(output.plan_table(outcome.plan, paths, scores))
    output.card_report(outcome.cards)
    click.echo(f"manifest: {out / 'family.json'}")
    namespace = card_settings.namespace or "YOUR-HF-NAMESPACE"
    click.echo(f"next, publish it: {shlex.join(['hubprune', 'push', str(out), '--namespace', namespace])}")


@click.command("check-criteria", cls=StagedCommand, epilog=SOURCE_HELP)
@source_argument
@option("--text", type=HELD_OUT_FILE, help="Held-out text (default: part of the text hubprune ships).")
@option("--pcts", type=CommaList("pcts"), default="10,20", show_default=True, help="MLP width percentages to remove.")
@option(
    "--criteria",
    type=CommaList("criteria"),
    default="maw,activation,random",
    show_default=True,
    help="Criteria to compare.",
)
@option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds of random pruning.")
@option("--tokens", type=click.IntRange(min=2), default=8192, show_default=True, help="Held-out tokens read.")
@RECOVER_OPTION
@distill_options
@calibration_options
@DEVICE_OPTION
@revision_option
def check_criteria_command(
    source: str | None,
    text: Path | None,
    pcts: tuple[str, ...],
    criteria: tuple[str, ...],
    seeds: int,
    tokens: int,
    recover: str,
    distill: DistillSettings,
    calibration: CalibrationSettings,
    device: str,
    revision: str | None,
) -> None:
    """Perplexity on held-out text of the model pruned by each criterion, every layer, against random pruning
    (median and range over the seeds); warns about any criterion that does worse than random. With --recover,
    each criterion is measured with and without recovery."""
    settings = CheckSettings(
        text=text,
        pcts=pcts,
        criteria=criteria,
        seeds=seeds,
        max_tokens=tokens,
        calibration=calibration,
        recover=recover,
        distill=distill,
        device=device,
    )
    with output.progress_display() as show:
        outcome = check_criteria(open_source(source, revision=revision), settings, on_progress=show)
    click.echo(output.check_table(outcome))
    for warning in outcome.warnings():
        click.echo(f"warning: {warning}", err=True)
