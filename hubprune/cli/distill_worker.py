"""What each process a `--distill-launcher` starts runs: `python -m hubprune.cli.distill_worker JOB`. Not a command
for people: `prune` and `build-family` write the job and start the processes (build/distill_launch.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hubprune.build.distill_launch import run_job
from hubprune.cli import quiet_libraries
from hubprune.cli.options import as_command_line
from hubprune.cli.output import ProgressDisplay
from hubprune.errors import HubpruneError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        click.echo("error: give one job file (hubprune's --distill-launcher starts this, not a person)", err=True)
        return 2
    quiet_libraries()
    try:
        run_job(Path(args[0]), ProgressDisplay())  # distill.train reports from the main process only
    except HubpruneError as exc:
        click.echo(f"error: {as_command_line(str(exc))}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
