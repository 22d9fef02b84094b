"""docs/cli.md is the CLI reference generated from the commands' `--help`: it must be current and cover
every command of the `hubprune` group."""

from __future__ import annotations

from pathlib import Path

from hubprune.cli import main
from hubprune.cli.reference import cli_reference

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
REGENERATE = "docs/cli.md is stale: run `python -m hubprune.cli.reference > docs/cli.md`"


def test_docs_cli_md_is_current():
    assert PAGE.read_text(encoding="utf-8") == cli_reference(), REGENERATE


def test_every_command_has_a_section():
    text = cli_reference()
    missing = [name for name in main.commands if f"\n## hubprune {name}\n" not in text]
    assert not missing, f"commands without a section in the CLI reference: {missing}"
