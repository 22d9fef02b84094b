"""`eval` and `profile`: parse, call one library function, print."""

from __future__ import annotations

from pathlib import Path

import click

from hubprune.cli import output
from hubprune.cli.options import StagedCommand, option, settings_options, typed_command
from hubprune.cli.prune_options import runtime_options
from hubprune.device import RuntimeSettings
from hubprune.measure.efficiency import ProfileSettings
from hubprune.measure.evaluate import EvalSettings, evaluate
from hubprune.measure.profile import profile_path


@click.command("eval", cls=StagedCommand)
@click.argument("path", type=click.Path(path_type=Path))
@settings_options(EvalSettings, "eval", "eval_settings")
@runtime_options("device", "dtype")
def eval_command(path: Path, eval_settings: EvalSettings, runtime: RuntimeSettings) -> None:
    """Run lm-eval benchmarks on a family (its base and every member) or on one checkpoint folder."""
    with output.progress_display() as show:
        outcome = evaluate(path, eval_settings, runtime, command=typed_command(), on_progress=show)
    click.echo(output.results_table(outcome))


@click.command("profile", cls=StagedCommand)
@click.argument("path", type=click.Path(path_type=Path))
@settings_options(ProfileSettings, "profile", "profile_settings")
@runtime_options("device", "dtype")
@option("--force", is_flag=True, help="Measure again even where profile.json has these settings.")
def profile_command(path: Path, profile_settings: ProfileSettings, runtime: RuntimeSettings, force: bool) -> None:
    """Measure latency, throughput, memory and energy of a family (base and every member) or one checkpoint,
    each model in a fresh process."""
    with output.progress_display() as show:
        profiles = profile_path(path, profile_settings, runtime, force=force, command=typed_command(), on_progress=show)
    click.echo(output.profile_table(profiles))
