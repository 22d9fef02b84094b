"""Benchmark suites: YAML files naming lm-eval tasks with their few-shot counts, reported metric and limit.

The built-in ones live in hubprune/data/suites/ (paper: the paper's 13 tasks; quick; offline: the shipped
text); a user's own YAML of the same form works anywhere a suite name does. Every field is checked on load.

`auto` picks one for the machine it runs on (choose_suite): the paper's suite needs the Hub's datasets, so it is
picked only where the Hub answers, which one quick request finds out (hub_status, asked once per process).
"""

from __future__ import annotations

import functools
import threading
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


HUB_PROBE_TIMEOUT_S = 3.0  # the Hub answers its home page in well under a second where it is reachable


@dataclass(frozen=True)
class HubStatus:
    endpoint: str
    answers: bool
    detail: str  # "HTTP 200", or why no answer came ("ConnectError: [Errno 111] Connection refused")


@dataclass(frozen=True)
class SuiteChoice:
    """What `auto` picked, and the one-line reason a user is told."""

    name: str
    reason: str


def hub_offline() -> bool:
    """True when the Hub client is told to stay offline (HF_HUB_OFFLINE, read by huggingface_hub at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_status() -> HubStatus:
    """Whether the Hub that datasets would come from (HF_ENDPOINT) answers: one HEAD request to its home page,
    with a short timeout, asked once per process and endpoint. Any HTTP answer counts; no answer at all does not."""
    from huggingface_hub import constants

    return _probe(constants.ENDPOINT.rstrip("/"))


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str) -> HubStatus:
    """The request runs in a thread that is given up on after the timeout: httpx's timeout does not cover the
    name lookup, which on a machine with no reachable DNS server can block for much longer."""
    from huggingface_hub import get_session

    found: list[HubStatus] = []

    def ask() -> None:
        try:
            response = get_session().head(f"{endpoint}/", timeout=HUB_PROBE_TIMEOUT_S, follow_redirects=False)
        except Exception as exc:  # refused, timed out, no such host, no route, a proxy's failure: no answer
            detail = " ".join(str(exc).split()) or "no answer"
            found.append(HubStatus(endpoint, False, f"{type(exc).__name__}: {detail}"))
        else:
            found.append(HubStatus(endpoint, True, f"HTTP {response.status_code}"))

    asking = threading.Thread(target=ask, name="hubprune-hub-probe", daemon=True)
    asking.start()
    asking.join(HUB_PROBE_TIMEOUT_S + 0.5)
    return found[0] if found else HubStatus(endpoint, False, f"no answer within {HUB_PROBE_TIMEOUT_S:g} s")


def choose_suite(source_is_embedded_default: bool) -> SuiteChoice:
    """`auto`: offline when the Hub client is told to be offline or the source is the embedded default (whose
    job runs without the network); else the paper's suite where the Hub answers, and offline where it does not."""
    if hub_offline():
        return SuiteChoice("offline", "HF_HUB_OFFLINE is set")
    if source_is_embedded_default:
        return SuiteChoice("offline", "the source is the embedded default model, whose job runs without the network")
    status = hub_status()
    if status.answers:
        return SuiteChoice(
            "paper", f"the Hub at {status.endpoint} answers, and the paper suite reads its datasets there"
        )
    return SuiteChoice(
        "offline",
        f"the Hub at {status.endpoint} does not answer ({status.detail}), and the paper suite reads its datasets there",
    )


def hub_problem(suite: str, status: HubStatus) -> str:
    """The reason a suite whose tasks read the Hub's datasets cannot run here, for the first line of an error."""
    return (
        f"suite {suite!r} reads its datasets from the Hub, and the Hub at {status.endpoint} does not answer "
        f"({status.detail}): use `suite` offline, or set HF_HUB_OFFLINE=1 to read datasets already in the cache"
    )


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
