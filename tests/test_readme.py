"""Every hubprune command the README and the docs/ pages show parses with the CLI as it is (options that exist,
values of the right type), the two commands that matter most are the ones .ci/run runs, and the README's
links to docs/ lead to pages that exist (and every page is linked). What the commands do is tested elsewhere
(test_cli, test_card, test_push, test_gguf_default's end-to-end test); this keeps the documentation honest
when options change or pages move."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

from hubprune.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]  # every page whose commands must parse


def commands_in(text: str) -> list[str]:
    """Each `hubprune ...` invocation in a page's bash blocks, without comments and environment prefixes."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)  # HF_TOKEN=... hubprune push ...
                if words and words[0] == "hubprune":
                    found.append(shlex.join(words))
    return found


def readme_commands() -> list[str]:
    return commands_in(README)


def page_commands() -> list[pytest.param]:
    """(page, command) for every command on every page, with readable test ids."""
    cases = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for i, command in enumerate(commands_in(page.read_text(encoding="utf-8"))):
            cases.append(pytest.param(name, command, id=f"{name}-{i}-{shlex.split(command)[1]}"))
    return cases


def readme_links() -> list[str]:
    """The targets of the README's relative Markdown links (no scheme, no in-page anchors), anchors removed."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    return sorted({t.split("#", 1)[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)})


def test_there_are_docs_pages():
    assert DOCS, "docs/ has no Markdown page"


def test_the_readme_shows_every_command():
    shown = {shlex.split(c)[1] for c in readme_commands()}
    assert shown >= {"build-family", "plan", "card", "push"}


@pytest.mark.parametrize(("page", "command"), page_commands())
def test_page_command_parses(page, command):
    name, *rest = shlex.split(command)[1:]
    sub = main.get_command(click.Context(main), name)
    assert sub is not None, f"unknown command in {page}: {command}"
    try:
        sub.make_context(name, rest)
    except click.UsageError as exc:  # an option that does not exist, or a value of the wrong type
        pytest.fail(f"{page} command does not parse: {command}: {exc.format_message()}")


@pytest.mark.parametrize("target", [t for t in readme_links() if t.startswith("docs/")])
def test_readme_docs_link_exists(target):
    assert (ROOT / target).is_file(), f"README.md links to {target}, which does not exist"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t).resolve() for t in readme_links()}
    unlinked = [page.relative_to(ROOT).as_posix() for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_docs_relative_links_exist(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:|#", target):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_ci_runs_the_readmes_two_commands():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    setup = re.search(r"```bash\n(python3 -m venv .*?)\n```", README).group(1)
    for step in setup.split(" && ")[2:]:  # after creating and activating the venv
        assert step in ci, f".ci/run lacks the README's step: {step}"
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci


def python_imports() -> list[pytest.param]:
    """Every name a page's Python blocks import from hubprune, with the page it is on."""
    cases = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL):
            for module, names in re.findall(r"^from (hubprune[\w.]*) import (.+)$", block, re.MULTILINE):
                for imported in (n.strip() for n in names.split(",")):
                    cases.append(pytest.param(module, imported, id=f"{name}-{module}.{imported}"))
    return cases


@pytest.mark.parametrize("module, name", python_imports())
def test_python_examples_import_what_exists(module, name):
    assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"


def test_the_readme_python_api_needs_one_import_line():
    block = re.search(r"## Python API.*?```python\n(.*?)```", README, re.DOTALL).group(1)
    assert len(re.findall(r"^(?:from|import) ", block, re.MULTILINE)) == 1


README_LIMIT = 14 * 1024  # bytes: a newcomer's page; detail belongs in docs/


def test_the_readme_stays_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail into docs/"
