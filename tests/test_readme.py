"""Every hubprune command the README shows parses with the CLI as it is (options that exist, values of the right
type), and the two commands that matter most are the ones .ci/run runs. What the commands do is tested
elsewhere (test_cli, test_card, test_push, test_gguf_default's end-to-end test); this keeps the README honest
when options change."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from hubprune.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """Each `hubprune ...` invocation in the README's bash blocks, without comments and environment prefixes."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)  # HF_TOKEN=... hubprune push ...
                if words and words[0] == "hubprune":
                    found.append(shlex.join(words))
    return found


def test_the_readme_shows_every_command():
    shown = {shlex.split(c)[1] for c in readme_commands()}
    assert shown >= {"build-family", "plan", "card", "push"}


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    name, *rest = shlex.split(command)[1:]
    sub = main.get_command(click.Context(main), name)
    assert sub is not None, f"unknown command in the README: {command}"
    try:
        sub.make_context(name, rest)
    except click.UsageError as exc:  # an option that does not exist, or a value of the wrong type
        pytest.fail(f"README command does not parse: {command}: {exc.format_message()}")


def test_ci_runs_the_readmes_two_commands():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    setup = re.search(r"```bash\n(python3 -m venv .*?)\n```", README).group(1)
    for step in setup.split(" && ")[2:]:  # after creating and activating the venv
        assert step in ci, f".ci/run lacks the README's step: {step}"
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci
