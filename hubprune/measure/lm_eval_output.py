"""Reading lm-eval's output: one task's record for eval.json, and lm-eval's own output kept per task.

lm-eval reports a group task (mmlu, leaderboard_musr) as a group of subtasks; where it records no figure for
the group itself (a direction, sample counts), the group's figure is the one its scored subtasks give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubprune.errors import EvaluationError
from hubprune.files import write_json_atomic
from hubprune.measure.suites import SuiteTask

# keys of lm-eval's output that hold one entry per task (or group)
PER_TASK_KEYS = frozenset(
    {"results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples"}
)


def task_result(raw: dict[str, Any], task: SuiteTask, key: str, seconds: float) -> dict[str, Any]:
    results = raw["results"].get(task.task)
    if results is None:
        raise EvaluationError(f"lm-eval returned no results for {task.task}")
    metric = task.metric or _first_metric(results)
    if metric not in results:
        available = sorted(k for k in results if "," in k and "_stderr" not in k)
        raise EvaluationError(f"task {task.task} has no metric {metric!r}; it reports {', '.join(available)}")
    name, _, filt = metric.partition(",")
    stderr = results.get(f"{name}_stderr,{filt}")
    return {
        "metric": metric,
        "value": results[metric],
        "stderr": stderr if isinstance(stderr, (int, float)) else None,
        "higher_is_better": _higher_is_better(raw, task.task, name),
        "num_fewshot": task.num_fewshot,
        "limit": task.limit,
        "n_samples": _n_samples(raw, task.task),
        "version": raw.get("versions", {}).get(task.task),
        "settings_key": key,
        "wall_seconds": round(seconds, 2),
    }


def _leaves(raw: dict[str, Any], task: str) -> list[str]:
    """The tasks that scored documents for `task`: itself, or the subtasks of a group (mmlu: its 57 subjects)."""
    groups = raw.get("group_subtasks", {})
    return sorted(name for name in _with_subtasks(task, groups) if not groups.get(name))


def _higher_is_better(raw: dict[str, Any], task: str, metric: str) -> bool | None:
    """lm-eval's direction for the metric; for a group it records none for (mmlu, a group of groups), the one
    every subtask agrees on."""
    table = raw.get("higher_is_better", {})
    own = table.get(task, {}).get(metric)
    if own is not None:
        return own
    found = {table.get(name, {}).get(metric) for name in _leaves(raw, task)} - {None}
    return found.pop() if len(found) == 1 else None


def _n_samples(raw: dict[str, Any], task: str) -> dict[str, int] | None:
    """Documents in the task and documents scored (with a limit, fewer); for a group, its subtasks' sums."""
    table = raw.get("n-samples", {})
    if task in table:
        return table[task]
    counts = [table.get(name) for name in _leaves(raw, task)]
    if not counts or None in counts:
        return None
    return {key: sum(count[key] for count in counts) for key in ("original", "effective")}


def _first_metric(results: dict[str, Any]) -> str:
    return next(k for k in results if "," in k and "_stderr" not in k)


def save_raw(results_dir: Path, task: str, raw: dict[str, Any]) -> None:
    """lm-eval's own output for the task (and the subtasks of a group task such as mmlu), kept beside eval.json
    for provenance. A call runs several tasks; each file keeps only its own task's entries, not the whole call's."""
    names = _with_subtasks(task, raw.get("group_subtasks", {}))
    kept = {}
    for key, value in raw.items():
        if key in ("samples", "git_hash", "upper_git_hash"):  # the last two: commits of the working directory
            continue
        per_task = isinstance(value, dict) and key in PER_TASK_KEYS
        kept[key] = {name: entry for name, entry in value.items() if name in names} if per_task else value
    write_json_atomic(results_dir / "lm_eval" / f"{task}.json", kept)


def _with_subtasks(task: str, group_subtasks: dict[str, list[str]]) -> set[str]:
    names, pending = set(), [task]
    while pending:
        name = pending.pop()
        if name not in names:
            names.add(name)
            pending.extend(group_subtasks.get(name, []))
    return names
