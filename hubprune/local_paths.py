"""Keeping the builder's machine out of what a member publishes.

A member's files go to a public repo, so they must not name the machine they were made on: no absolute path
(which carries the user name, the home folder and the project's layout) and no host name. The stages that
write a member's files replace such paths as they write (`scrub`), and `push` looks again at every text file
before the first request (`machine_names_in`), so that a leak stops the push instead of being published.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HOME = "~"
MIN_HOST_NAME = 4  # shorter host names ("vm", "pc") are words of ordinary text: they cannot be told apart


def replacements(named: dict[Path | str, str]) -> dict[str, str]:
    """Each folder of `named`, as given and resolved, with the neutral text that stands for it in a published
    file, plus the home folder (as "~"); longest first, so that a folder inside another is replaced whole."""
    found: dict[str, str] = {}
    for folder, label in named.items():
        for form in {str(folder), str(Path(folder).expanduser().resolve())}:
            if form not in (".", "", "/"):
                found.setdefault(form.rstrip("/"), label)
    found.setdefault(str(Path.home()).rstrip("/"), HOME)
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))


def scrub(value: Any, table: dict[str, str]) -> Any:
    """`value` (JSON-like: dicts, lists, strings) with every occurrence of a path of `table` replaced by its
    label; everything else is kept as it is."""
    if isinstance(value, str):
        for path, label in table.items():
            if path in value:
                value = re.sub(
                    r"(?<![\w./-])" + re.escape(path) + r"(?=$|[/\\,\s\"'=:;)])", lambda _, label=label: label, value
                )
        return value
    if isinstance(value, dict):
        return {key: scrub(item, table) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item, table) for item in value]
    return value


def command_without_local_paths(command: str) -> str:
    """A command line as typed, with every absolute path in it (an argument, or an option's value) written as its
    last component: `--suite /home/me/suite.yaml` becomes `--suite suite.yaml`. A value that is itself a command
    (`--distill-launcher "accelerate launch --config_file /home/me/ds.yaml"`) has its words written so too."""

    def name_only(word: str) -> str:
        flag, equals, value = word.partition("=") if word.startswith("--") else ("", "", word)
        path = os.path.expanduser(value)
        if len(value.split()) > 1 and not os.path.exists(path):  # a command, not a path with spaces in it
            value = command_without_local_paths(value)
        elif os.path.isabs(path):
            value = Path(value).name
        return f"{flag}{equals}{value}"

    return shlex.join(name_only(word) for word in shlex.split(command))


def machine_needles(folders: Iterable[Path | str]) -> list[str]:
    """The texts that would name this machine in a published file: the absolute forms of `folders`, the home
    folder, the current folder, and the host name when it is long enough to tell from ordinary words."""
    needles = {str(Path(f).expanduser().resolve()) for f in folders}
    needles |= {str(Path.home()) + os.sep, os.getcwd() + os.sep}
    needles = {n for n in needles if len(n.strip(os.sep)) > 1}
    host = socket.gethostname()
    if len(host) >= MIN_HOST_NAME:
        needles.add(host)
    return sorted(needles, key=len, reverse=True)


def machine_names_in_folder(
    folder: Path, needles: list[str], wanted: Callable[[Path], bool]
) -> tuple[Path, str] | None:
    """The first text file under `folder` (its path relative to `folder`, dot-folders left out, only those that
    `wanted` accepts) that names this machine, with the needle found; None when none does. Files that are not
    UTF-8 text (weights, images) are not read."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts) or not wanted(relative):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found = machine_names_in(text, needles)
        if found:
            return relative, found
    return None


def machine_names_in(text: str, needles: list[str]) -> str | None:
    """The first needle found in `text` (a host name only as a whole word), or None."""
    for needle in needles:
        if os.sep in needle:
            if needle in text:
                return needle
        elif re.search(rf"(?<![\w.-]){re.escape(needle)}(?![\w-])", text):
            return needle
    return None
