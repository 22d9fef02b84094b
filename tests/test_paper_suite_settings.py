"""The `paper` suite's settings against two sources outside hubprune: the paper's table of benchmarks (Martra 2025,
arXiv 2512.22671; reference/paper.md, "Benchmarks"), transcribed here, and the task files the installed lm-eval
ships (lm_eval/tasks/**.yaml), read here with a YAML parser of the test's own, not through hubprune or lm-eval's
TaskManager. Each suite task must be an lm-eval task or group of that name, whose task files give the metric (and,
after the comma, the filter) the suite reports, with the output type that metric comes from, and the few-shot count
wherever a task file fixes one."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import lm_eval
import pytest
import yaml

from hubprune.measure.suites import load_suite

# reference/paper.md: "Benchmarks (lm-eval harness, bf16, batch_size auto)": task, few-shot, metric key reported
PAPER = [
    ("wikitext", 0, "word_perplexity,none"),
    ("lambada_openai", 0, "perplexity,none"),
    ("boolq", 0, "acc,none"),
    ("mmlu", 5, "acc,none"),
    ("arc_challenge", 0, "acc_norm,none"),
    ("hellaswag", 0, "acc_norm,none"),
    ("winogrande", 0, "acc,none"),
    ("piqa", 0, "acc,none"),
    ("truthfulqa_mc1", 0, "acc,none"),
    ("truthfulqa_mc2", 0, "acc,none"),
    ("gsm8k", 5, "exact_match,flexible-extract"),
    ("ifeval", 0, "prompt_level_strict_acc,none"),
    ("leaderboard_musr", 0, "acc_norm,none"),
]
# The lm-eval request type each metric is computed from (lm-eval's docs/task_guide.md, "Output type")
OUTPUT_TYPE = {
    "word_perplexity": "loglikelihood_rolling",
    "perplexity": "loglikelihood",
    "acc": "multiple_choice",
    "acc_norm": "multiple_choice",
    "exact_match": "generate_until",
    "prompt_level_strict_acc": "generate_until",
}
TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"


class _TaskYamlLoader(yaml.SafeLoader):
    """lm-eval's task YAMLs name Python functions with `!function module.name`: read those as None."""


_TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


@functools.cache
def task_file(path: Path) -> dict[str, Any]:
    """A task YAML with its `include` chain merged in, as lm-eval merges it (the including file wins)."""
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader) or {}
    if "include" in data:
        data = {**task_file((path.parent / data.pop("include")).resolve()), **data}
    return data


def _names(data: dict[str, Any]) -> set[str]:
    """The names a task file answers to: its task (a single one), its group, its tags."""
    tags = data.get("tag") or []
    names = set([tags] if isinstance(tags, str) else tags)
    names |= {data[k] for k in ("task", "group") if isinstance(data.get(k), str)}
    return names


@functools.cache
def _yaml_files(folder: Path) -> tuple[tuple[Path, str], ...]:
    return tuple((p, p.read_text(encoding="utf-8")) for p in sorted(folder.rglob("*.yaml")))


def find(name: str, near: Path | None = None) -> list[Path]:
    """The task files named `name` (a task, group or tag): those in `near` (a group's own folder, where its
    subtasks live) if any, else anywhere under lm_eval/tasks."""
    line = re.compile(rf"""^\s*(?:-\s*|"?(?:task|group|tag)"?\s*:\s*)["']?{re.escape(name)}["']?\s*$""", re.MULTILINE)
    for folder in filter(None, [near, TASKS_DIR]):
        found = [p for p, text in _yaml_files(folder) if line.search(text) and name in _names(task_file(p))]
        if found:
            return found
    return []


def leaves(name: str, near: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every task file that runs documents for `name`: the task itself, or every task under a group or tag."""
    found = []
    for path in find(name, near):
        data = task_file(path)
        if "group" in data and data["group"] == name:
            for entry in data["task"]:
                found += leaves(entry if isinstance(entry, str) else entry["task"], path.parent)
        else:
            found.append((path, data))
    return found


def test_the_paper_suite_is_the_papers_table():
    """Every benchmark of the paper, in its order, with its few-shot count and reported metric; no limit."""
    suite = load_suite("paper")
    assert [(t.task, t.num_fewshot, t.metric) for t in suite.tasks] == PAPER
    assert all(t.limit is None for t in suite.tasks)


@pytest.mark.parametrize("task", load_suite("paper").tasks, ids=lambda t: t.task)
def test_each_paper_task_is_lm_evals_own_with_that_metric_and_few_shot(task):
    metric, filter_name = task.metric.split(",")
    [top] = find(task.task)
    config = task_file(top)
    if config.get("group") == task.task:  # a group reports its subtasks' aggregate
        assert metric in [m["metric"] for m in config["aggregate_metric_list"]], config["aggregate_metric_list"]
    subtasks = leaves(task.task)
    assert subtasks, f"{task.task} runs no task of lm-eval's"
    for path, leaf in subtasks:
        where = path.relative_to(TASKS_DIR)
        assert metric in [m["metric"] for m in leaf["metric_list"]], (where, leaf["metric_list"])
        filters = [f["name"] for f in leaf.get("filter_list") or []]
        assert filter_name in (filters or ["none"]), (where, filters)
        assert leaf["output_type"] == OUTPUT_TYPE[metric], (where, leaf["output_type"])
        assert leaf.get("num_fewshot", task.num_fewshot) == task.num_fewshot, (where, leaf.get("num_fewshot"))
    if task.task == "mmlu":
        assert len(subtasks) == 57  # the 57 subjects
