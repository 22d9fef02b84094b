"""The `hubprune` command. Only this package prints or exits: each command parses its options into the
library's settings, makes one library call and prints the outcome (cli/output.py)."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import click

from hubprune._version import __version__
from hubprune.cli.build import build_family_command, check_criteria_command, plan, prune
from hubprune.cli.export import gguf_command
from hubprune.cli.measure import eval_command, profile_command
from hubprune.cli.options import as_command_line
from hubprune.cli.publish import card_command, push_command
from hubprune.errors import HubpruneError, LaunchError
from hubprune.progress import quiet_libraries
from hubprune.recover.launch import launched_processes


class HubpruneGroup(click.Group):
    """Every expected error, from the library or from Click's parsing, is one line on stderr and exit status 1;
    an interrupted command says that nothing half-written was kept and exits 130."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except HubpruneError as exc:
            click.echo(f"error: {as_command_line(str(exc), self.commands.values())}", err=True)
            sys.exit(1)
        except click.Abort:  # Click turns KeyboardInterrupt into Abort
            click.echo("interrupted: nothing half-written was kept; run the same command again to finish", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            where = f" (see hubprune {exc.ctx.info_name} --help)" if getattr(exc, "ctx", None) else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _return_large_buffers_to_the_system() -> None:
    """Make glibc give every buffer of 1 MiB or more back to the system as soon as it is freed.

    By default glibc raises its mmap threshold after each large free, so the 16 MiB chunks the pruner
    streams end up cached in per-thread heaps: peak RSS then grows with the number of members written in
    parallel (about 0.5 GiB instead of 0.3 GiB for six members of a 1B model), for no gain in speed.
    The process belongs to the CLI, so this is set here and not in the library.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    m_mmap_threshold = -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1024 * 1024)


@click.group(cls=HubpruneGroup)
@click.version_option(__version__, prog_name="hubprune")
def main() -> None:
    """Build a family of width-pruned GLU checkpoints that load with plain from_pretrained."""
    launched = launched_processes()
    if launched is not None:  # every process would prune into the same folder
        variable, count = launched
        raise LaunchError(
            f"hubprune runs in one process, and a launcher started {count} ({variable}={count}): run hubprune "
            "without it, and give the launcher to --distill-launcher to distil in several processes"
        )
    _return_large_buffers_to_the_system()
    quiet_libraries()


for command in (
    plan,
    prune,
    build_family_command,
    check_criteria_command,
    eval_command,
    profile_command,
    gguf_command,
    card_command,
    push_command,
):
    main.add_command(command)
