"""`card` and `push`: parse, call one library function, print."""

from __future__ import annotations

from pathlib import Path

import click

from hubprune.cli import output
from hubprune.cli.options import CommaList, StagedCommand, option, settings_options
from hubprune.errors import TargetError
from hubprune.publish.cards import CardSettings, render_cards
from hubprune.publish.push import PushSettings, push_family


@click.command("card", cls=StagedCommand)
@click.argument("family", type=click.Path(path_type=Path))
@settings_options(CardSettings, "card", "card_settings")
def card_command(family: Path, card_settings: CardSettings) -> None:
    """Render the model card (README.md and plots) of every member and of the family from what was measured."""
    output.card_report(render_cards(family, card_settings))


@click.command("push", cls=StagedCommand)
@click.argument("family", type=click.Path(path_type=Path))
@option("--namespace", required=True, help="Hub user or organisation to publish under: repos NS/<member>.")
@option("--private", is_flag=True, help="Make the repos (existing ones too) and a new collection private.")
@option("--collection", help="Title of the family's collection (default: '<base> width-pruned family').")
@option("--no-collection", is_flag=True, help="Publish the repos without a collection.")
@option("--members", type=CommaList("names"), default="", help="Only these members, comma-separated names.")
@option("--revision", help="Branch to commit to, created if missing (default: the repo's default branch).")
@option("--commit-message", help="Message of each member's commit.")
@option("--force", is_flag=True, help="Overwrite repos that exist and were not made by hubprune.")
@option("--dry-run", is_flag=True, help="Print what would be created and uploaded; no network.")
def push_command(
    family: Path,
    namespace: str,
    private: bool,
    collection: str | None,
    no_collection: bool,
    members: tuple[str, ...],
    revision: str | None,
    commit_message: str | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Publish every member as the Hub repo NAMESPACE/<member> (one commit each) and the family as a collection.
    The token comes from HF_TOKEN or `hf auth login`."""
    if collection and no_collection:
        raise TargetError("give --collection TITLE or --no-collection, not both")
    settings = PushSettings(
        namespace=namespace,
        private=private,
        collection=collection,
        make_collection=not no_collection,
        members=members,
        revision=revision,
        commit_message=commit_message,
        force=force,
        dry_run=dry_run,
    )
    with output.progress_display() as show:
        outcome = push_family(family, settings, on_progress=show)
    output.push_report(outcome)
