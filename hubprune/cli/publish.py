"""`card` and `push`: parse, call one library function, print."""

from __future__ import annotations

from pathlib import Path

import click

from hubprune.cli import output
from hubprune.cli.options import StagedCommand, settings_options
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
@settings_options(PushSettings, "general", "settings")
def push_command(family: Path, settings: PushSettings) -> None:
    """Publish every member as the Hub repo NAMESPACE/<member> (one commit each) and the family as a collection.
    The token comes from HF_TOKEN or `hf auth login`."""
    with output.progress_display() as show:
        outcome = push_family(family, settings, on_progress=show)
    output.push_report(outcome)
