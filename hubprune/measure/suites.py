"""Benchmark suites: YAML files naming lm-eval tasks with their few-shot counts, reported metric and limit.

The built-in ones live in hubprune/data/suites/ (paper: the paper's 13 tasks; quick; offline: the shipped
text); a user's own YAML of the same form works anywhere a suite name does. Every field is checked on load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hubprune.errors import EvaluationError

SUITE_FIELDS = {"task", "num_fewshot", "metric", "limit"}


@dataclass(frozen=True)
class SuiteTask:
    task: str
    num_fewshot: int
    metric: str  # the lm-eval result key reported, e.g. "acc_norm,none"
    limit: int | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple[SuiteTask, ...]


def builtin_suites() -> list[str]:
    folder = resources.files("hubprune") / "data" / "suites"
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def default_suite(source_is_embedded_default: bool) -> str:
    """offline when the network is off or the source is the embedded default; the paper's suite elsewhere."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return "offline" if offline or source_is_embedded_default else "paper"


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a user YAML of the same form; every field is checked."""
    path = Path(name_or_path)
    if name_or_path in builtin_suites():
        text = (resources.files("hubprune") / "data" / "suites" / f"{name_or_path}.yaml").read_text(encoding="utf-8")
        where = f"built-in suite {name_or_path!r}"
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        text, where = path.read_text(encoding="utf-8"), f"suite file {path}"
    else:
        raise EvaluationError(
            f"unknown suite {name_or_path!r}: choose one of {', '.join(builtin_suites())} or give a suite .yaml file"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EvaluationError(f"{where} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise EvaluationError(f"{where} needs a non-empty 'tasks' list")
    return Suite(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        tasks=tuple(_suite_task(entry, i, where) for i, entry in enumerate(data["tasks"], 1)),
    )


def _suite_task(entry: Any, number: int, where: str) -> SuiteTask:
    if not isinstance(entry, dict):
        raise EvaluationError(f"{where}: task {number} is not a mapping of {', '.join(sorted(SUITE_FIELDS))}")
    unknown = set(entry) - SUITE_FIELDS
    if unknown:
        raise EvaluationError(
            f"{where}: task {number} has unknown field(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(SUITE_FIELDS))}"
        )
    task, shots, metric, limit = entry.get("task"), entry.get("num_fewshot", 0), entry.get("metric"), entry.get("limit")
    if not isinstance(task, str) or not task:
        raise EvaluationError(f"{where}: task {number} needs a 'task' name")
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise EvaluationError(f"{where}: task {task!r} has num_fewshot {shots!r}; use a whole number >= 0")
    if not isinstance(metric, str) or "," not in metric:
        raise EvaluationError(
            f"{where}: task {task!r} has metric {metric!r}; use an lm-eval result key like 'acc,none'"
        )
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise EvaluationError(f"{where}: task {task!r} has limit {limit!r}; use a whole number >= 1 or leave it out")
    return SuiteTask(task, shots, metric, limit)
