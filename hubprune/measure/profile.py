"""Efficiency profiling of a family, a member or a checkpoint: results/profile.json per model.

measure.py says what is measured in one process. This module decides where and how often:
- every measurement runs in a fresh Python process (`python -m hubprune.measure.profile REQUEST RESULT`), so that
  memory, allocator caches and page-cache-warm imports of one model never flatter or burden the next one;
- each model is measured in `rounds` such processes, each with its share of the runs and seconds, and a
  family's models take turns round by round (base, members, base, members, ...). On a shared or virtual
  machine, speed drifts over minutes and one process's median can sit 10-20 % off another's; pooling the
  rounds' runs makes the median repeatable, and taking turns spreads any drift over every model alike;
- the rounds' runs are pooled into one document: medians and p90s over every run, the largest peak memory,
  energy over all timed windows, and each round's medians with their spread between rounds, so a reader can
  see how steady the machine was;
- each finished round is kept (results/.profile-rounds/, which push never uploads), so a stopped profile
  resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from hubprune import manifest
from hubprune.device import RuntimeSettings, on_runtime
from hubprune.errors import HubpruneError, ProfileError
from hubprune.files import write_json_atomic
from hubprune.measure.base_model import BASE_RESULTS, base_label, locate_base
from hubprune.measure.efficiency import (
    FORMAT,
    RESULTS_DIR,
    ProfileSettings,
    distribution,
    measure,
    resolved,
)
from hubprune.progress import Progress, ProgressCallback, report

STAGE = "profile"
PROFILE_FILE = f"{RESULTS_DIR}/profile.json"  # inside a member (or checkpoint) folder
ROUNDS_DIR = ".profile-rounds"  # next to profile.json while rounds are under way; a dot folder is never pushed
REUSED = "profile.json already holds a completed run with these settings (force to measure again)"


# What each progress status means to the person watching; "done" needs no line of its own.
PROGRESS_VERBS = {
    "start": "measuring",
    "resumed": "kept from the stopped run",
    "reused": "kept (same settings)",
    "skipped": "skipped",
    "failed": "failed",
}


@dataclass(frozen=True)
class ModelProfile:
    """The outcome for one model of a profile_path call.

    status: "done" (measured now), "reused" (an up-to-date profile.json was kept), "skipped" (reason says why).
    """

    name: str
    role: str  # "base" | "member" | "checkpoint"
    status: str
    report: Path  # the profile.json written or kept (for a skipped base: the file saying why)
    reason: str | None = None
    document: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Job:
    """A model to measure: where it is, where its profile.json goes, and whose family.json records it."""

    name: str
    role: str
    folder: Path
    report: Path
    index: int
    total: int
    family_dir: Path | None = None  # set for members: their profile stage is recorded there


# --- one model: rounds of fresh processes, pooled ---------------------------------------------------------------


def profile_model(folder: Path, settings: ProfileSettings, *, out: Path | None = None) -> dict[str, Any]:
    """Profile the checkpoint in `folder` in settings.rounds fresh Python processes, one after another; write
    the pooled document to `out` (default FOLDER/results/profile.json) atomically, and return it. Raises
    ProfileError if a run fails."""
    settings = resolved(settings)
    folder = Path(folder).resolve()
    out = Path(out) if out is not None else folder / PROFILE_FILE
    job = _Job(folder.name, "checkpoint", folder, out, 0, 1)
    return _measure_in_turns([job], settings, force=True, on_progress=None)[0].document  # type: ignore[return-value]


def round_share(settings: ProfileSettings) -> ProfileSettings:
    """What each round measures: its share of the timed runs (rounded up) and of the timed seconds."""
    return replace(
        settings,
        rounds=1,
        min_runs=math.ceil(settings.min_runs / settings.rounds),
        min_seconds=settings.min_seconds / settings.rounds,
    )


def merge_rounds(rounds: Sequence[dict[str, Any]], settings: ProfileSettings) -> dict[str, Any]:
    """One profile.json document from the rounds' documents (measure() each, in round order).

    Medians and p90s are over every timed run of every round (each run keeps its round number); peak memory
    is the largest round's; energy is every round's joules over every round's tokens; load time is the median
    of the rounds' loads. Each batch size also lists its rounds' medians and their spread (coefficient of
    variation), the measure of how steady the machine was.
    """
    first, last = rounds[0], rounds[-1]
    loads = [r["model"]["load_time"]["value"] for r in rounds]
    load = dict(first["model"]["load_time"])
    load.update(value=statistics.median(loads), samples=loads)
    load["how"] += f"; the median of the {len(rounds)} rounds' processes"
    share = round_share(settings)
    return {
        **first,
        "format": FORMAT,
        "created": last["created"],
        "model": {**first["model"], "load_time": load},
        "settings": {
            **asdict(settings),
            "batch_sizes": list(settings.batch_sizes),
            "dtype": first["settings"]["dtype"],
        },
        "rounds": {
            "count": len(rounds),
            "min_runs_per_round": share.min_runs,
            "min_seconds_per_round": share.min_seconds,
            "how": "each round is a fresh process with its own load and warm-up; a family's models take turns "
            "round by round; every figure pools the rounds",
        },
        "batches": [_merge_batch([r["batches"][i] for r in rounds]) for i in range(len(first["batches"]))],
    }


def _merge_batch(batches: list[dict[str, Any]]) -> dict[str, Any]:
    first = batches[0]
    runs = [{**run, "round": number} for number, batch in enumerate(batches, start=1) for run in batch["runs"]]
    per_round = [
        {
            "round": number,
            "timed_runs": batch["timed_runs"],
            "ttft_median_s": batch["ttft"]["median"],
            "decode_median_tokens_per_s": batch["decode_throughput"]["median"],
            "e2e_median_s": batch["e2e_latency"]["median"],
            "peak_memory_bytes": batch["peak_memory"]["value"],
            "other_cpu_load": batch["other_cpu_load"]["value"],
        }
        for number, batch in enumerate(batches, start=1)
    ]
    windows = [batch["timed_window_s"] for batch in batches]
    return {
        "batch_size": first["batch_size"],
        "warmup_runs": sum(batch["warmup_runs"] for batch in batches),
        "timed_runs": len(runs),
        "timed_window_s": sum(windows),
        "ttft": distribution([r["ttft_s"] for r in runs], "s", first["ttft"]["how"]),
        "decode_throughput": distribution(
            [r["decode_tokens"] / r["decode_s"] for r in runs], "tokens/s", first["decode_throughput"]["how"]
        ),
        "e2e_latency": distribution([r["e2e_s"] for r in runs], "s", first["e2e_latency"]["how"]),
        **{  # GPU: peak_memory_reserved beside it; CPU: peak_rss_hwm
            key: _largest([batch[key] for batch in batches])
            for key in ("peak_memory", "peak_memory_reserved", "peak_rss_hwm")
            if key in first
        },
        "other_cpu_load": _window_mean([batch["other_cpu_load"] for batch in batches], windows),
        "energy_per_token": _pooled_energy([batch["energy_per_token"] for batch in batches]),
        "rounds": per_round,
        "spread_between_rounds": {
            key: _cv([row[column] for row in per_round])
            for key, column in (
                ("ttft", "ttft_median_s"),
                ("decode_throughput", "decode_median_tokens_per_s"),
                ("e2e_latency", "e2e_median_s"),
            )
        }
        | {
            "unit": "coefficient of variation",
            "how": "sample standard deviation / mean of the rounds' medians (null with one round); a few percent "
            "is a steady machine",
        },
        "runs": runs,
    }


def _largest(figures: list[dict[str, Any]]) -> dict[str, Any]:
    values = [f["value"] for f in figures if f.get("value") is not None]
    if not values:
        return figures[0]
    return {
        **figures[0],
        "value": max(values),
        "method": "measured",
        "how": figures[0]["how"] + "; the largest round's",
    }


def _window_mean(figures: list[dict[str, Any]], windows: list[float]) -> dict[str, Any]:
    """The rounds' other-CPU loads averaged over their timed windows (null if any round could not read it)."""
    values = [f.get("value") for f in figures]
    pooled = dict(figures[0])
    if any(v is None for v in values) or sum(windows) <= 0:
        pooled.update(value=None, method="unavailable")
    else:
        pooled["value"] = sum(v * w for v, w in zip(values, windows, strict=True)) / sum(windows)
    return pooled


def _pooled_energy(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Every round's joules over every round's tokens; unavailable if any round had no counter reading."""
    if any(f.get("joules") is None for f in figures):
        return next((f for f in figures if f.get("value") is None), figures[0])
    joules = sum(f["joules"] for f in figures)
    tokens = sum(f["tokens"] for f in figures)
    window = sum(f["window_s"] for f in figures)
    return {
        **figures[0],
        "value": joules / tokens,
        "joules": joules,
        "tokens": tokens,
        "window_s": window,
        "mean_power_w": joules / window if window > 0 else None,
        "how": figures[0]["how"] + ", summed over the rounds",
    }


def _cv(values: list[float]) -> float | None:
    if len(values) < 2 or statistics.mean(values) == 0:
        return None
    return statistics.stdev(values) / statistics.mean(values)


def _measure_in_turns(
    jobs: Sequence[_Job], settings: ProfileSettings, force: bool, on_progress: ProgressCallback | None
) -> list[ModelProfile]:
    """Measure every job for settings.rounds rounds, the jobs taking turns within each round; write each
    job's pooled profile.json (and record a member's stage) as its last round ends."""
    share = round_share(settings)
    rounds: dict[int, list[dict[str, Any]]] = {id(job): [] for job in jobs}
    outcomes = []
    for number in range(1, settings.rounds + 1):
        for job in jobs:
            rounds[id(job)].append(_one_round(job, number, settings, share, force, on_progress))
            if number == settings.rounds:
                outcomes.append(_finish(job, rounds[id(job)], settings, on_progress))
    return outcomes


def _one_round(
    job: _Job,
    number: int,
    settings: ProfileSettings,
    share: ProfileSettings,
    force: bool,
    on_progress: ProgressCallback | None,
) -> dict[str, Any]:
    kept = _round_file(job, number)
    if not force:
        document = _reusable_round(kept, settings)
        if document is not None:
            _emit(on_progress, job, "resumed", number, settings.rounds)
            return document
    _emit(on_progress, job, "start", number, settings.rounds)
    try:
        document = _in_fresh_process(job.folder, share)
    except ProfileError as exc:
        _emit(on_progress, job, "failed", number, settings.rounds)
        if job.family_dir is None:
            raise ProfileError(f"profiling {job.folder} failed: {exc}") from None
        # the models finished before this one are kept: the next run measures only what is missing
        manifest.record_stage(job.family_dir, job.name, STAGE, status="failed", error=str(exc))
        what = f"the base {job.name}" if job.role == "base" else f"member {job.name}"
        raise ProfileError(
            f"profile of {what} failed: {exc}; family.json records it: run the same command again to redo it"
        ) from None
    kept.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(kept, {"settings": _settings_key(settings), "round": number, "document": document})
    return document


def _finish(
    job: _Job, rounds: list[dict[str, Any]], settings: ProfileSettings, on_progress: ProgressCallback | None
) -> ModelProfile:
    document = merge_rounds(rounds, settings)
    job.report.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.report, document)
    shutil.rmtree(job.report.parent / ROUNDS_DIR, ignore_errors=True)
    if job.family_dir is not None:
        manifest.record_stage(
            job.family_dir,
            job.name,
            STAGE,
            status="done",
            file=PROFILE_FILE,
            device=settings.device,
            dtype=document["settings"]["dtype"],
            batch_sizes=list(settings.batch_sizes),
        )
    _emit(on_progress, job, "done", settings.rounds, settings.rounds)
    return ModelProfile(job.name, job.role, "done", job.report, None, document)


def _round_file(job: _Job, number: int) -> Path:
    return job.report.parent / ROUNDS_DIR / f"{job.report.stem}-round-{number}.json"


def _settings_key(settings: ProfileSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(settings)))


def _reusable_round(path: Path, settings: ProfileSettings) -> dict[str, Any] | None:
    """A round kept by a stopped run with exactly these settings, else None."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("settings") != _settings_key(settings):
        return None
    document = kept.get("document")
    return document if isinstance(document, dict) and document.get("status") == "done" else None


def _in_fresh_process(folder: Path, settings: ProfileSettings) -> dict[str, Any]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # so the child imports this very hubprune
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="hubprune-profile-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"folder": str(folder), "settings": asdict(settings)}), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "hubprune.measure.profile", str(request), str(result)],
            capture_output=True,  # the library never prints: the child's warnings stay here
            text=True,
            env=env,
        )
        answer = json.loads(result.read_text(encoding="utf-8")) if result.exists() else None
    if answer is not None and "error" in answer:
        raise ProfileError(answer["error"])
    if proc.returncode != 0 or answer is None:
        raise ProfileError(_death(proc))
    return answer


def _death(proc: subprocess.CompletedProcess[str]) -> str:
    """One line on how the child process ended."""
    if proc.returncode < 0:
        return f"its process was killed by signal {-proc.returncode} (out of memory?): try smaller batch sizes"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1].strip()[:300] if lines else "no error output"
    return f"its process exited with status {proc.returncode}: {last}"


def _child_main(argv: Sequence[str]) -> int:
    """The fresh process: read the request, measure, write the document (or {"error": message})."""
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text(encoding="utf-8"))
    raw = request["settings"]
    settings = ProfileSettings(**{**raw, "batch_sizes": tuple(raw["batch_sizes"])})
    try:
        document = measure(Path(request["folder"]), settings)
    except HubpruneError as exc:
        write_json_atomic(result_path, {"error": str(exc)})
        return 1
    write_json_atomic(result_path, document)
    return 0


# --- a family, a member or a checkpoint folder ----------------------------------------------------------------


def profile_path(
    path: Path,
    settings: ProfileSettings,
    runtime: RuntimeSettings | None = None,
    *,
    force: bool = False,
    command: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[ModelProfile, ...]:
    """Profile what `path` holds, in rounds of fresh processes, and write the results (for a family, with
    `command`, the command line that ran this, recorded in family.json for the cards).

    - a family folder (has family.json): the base model and every built member, taking turns each round.
      The base goes to FAMILY/base-results/profile.json; it is profiled when a local copy of it exists (the
      source folder, the dequantized GGUF in hubprune's cache, or the Hub cache at the recorded revision),
      otherwise that file records status "skipped" and the reason. Each member gets MEMBER/results/profile.json
      and its "profile" stage in family.json: {"status": "done", "file", "device", "dtype", "batch_sizes"}, or
      {"status": "failed", "error"} before the error is raised.
    - a member folder of a family: that member alone, its stage recorded in the parent's family.json.
    - any other checkpoint folder: FOLDER/results/profile.json only.
    A model whose profile.json already holds a completed run with the same settings is kept ("reused") unless
    `force`; rounds finished by a stopped run with the same settings are kept too ("resumed"). Raises
    ProfileSettingsError / EnergyError for bad settings (before anything runs) and ProfileError when a model
    fails (the rounds finished before it are kept for the next run). The runtime, when given, sets the device and
    dtype.
    """
    settings = resolved(on_runtime(settings, runtime))
    where = manifest.locate(path)
    if where.kind == "family":
        profiles = _profile_family(where.path, settings, force, on_progress)
        if command is not None:
            manifest.record_command(where.path, "profile", command)
        return profiles
    if where.member is not None and where.family_dir is not None:
        folder = where.family_dir / where.member.path
        job = _Job(where.member.name, "member", folder, folder / PROFILE_FILE, 0, 1, where.family_dir)
        return _profile_jobs([job], [], settings, force, on_progress)
    if where.kind == "unknown":
        raise ProfileError(manifest.not_a_model(path))
    path = where.path
    job = _Job(path.name, "checkpoint", path, path / PROFILE_FILE, 0, 1)
    return _profile_jobs([job], [], settings, force, on_progress)


def _profile_family(
    family_dir: Path, settings: ProfileSettings, force: bool, on_progress: ProgressCallback | None
) -> tuple[ModelProfile, ...]:
    family = manifest.load(family_dir)
    members = family.built_members()
    total = 1 + len(members)
    jobs, settled = [], []
    base = _base_job(family_dir, family, settings, force, total, on_progress)
    (jobs if isinstance(base, _Job) else settled).append(base)
    for index, member in enumerate(members, start=1):
        folder = family_dir / member.path
        jobs.append(_Job(member.name, "member", folder, folder / PROFILE_FILE, index, total, family_dir))
    return _profile_jobs(jobs, settled, settings, force, on_progress)


def _base_job(
    family_dir: Path,
    family: manifest.Family,
    settings: ProfileSettings,
    force: bool,
    total: int,
    on_progress: ProgressCallback | None,
) -> _Job | ModelProfile:
    """The base as a job to measure, or its outcome already: kept from an earlier run, or skipped."""
    name = f"{base_label(family)} (base)"
    report = family_dir / BASE_RESULTS / "profile.json"
    existing = None if force else _reusable(report, settings)
    if existing is not None:  # checked first: a base measured earlier is kept even if it has gone since
        _emit(on_progress, _Job(name, "base", family_dir, report, 0, total), "reused")
        return ModelProfile(name, "base", "reused", report, REUSED, existing)
    folder, reason = locate_base(family)
    if folder is None:
        _emit(on_progress, _Job(name, "base", family_dir, report, 0, total), "skipped")
        document = {"format": FORMAT, "status": "skipped", "reason": reason, "model": {"source": family.source.id}}
        report.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(report, document)
        return ModelProfile(name, "base", "skipped", report, reason, document)
    return _Job(name, "base", folder, report, 0, total)


def _profile_jobs(
    jobs: list[_Job],
    settled: list[ModelProfile],
    settings: ProfileSettings,
    force: bool,
    on_progress: ProgressCallback | None,
) -> tuple[ModelProfile, ...]:
    """Keep the jobs whose profile.json is up to date, measure the rest in turns; outcomes in job order, the
    already settled ones (a kept or skipped base) first."""
    outcomes: dict[int, ModelProfile] = {}
    to_measure = []
    for job in jobs:
        existing = None if force or job.role == "base" else _reusable(job.report, settings)
        if existing is None:
            to_measure.append(job)
            continue
        _emit(on_progress, job, "reused")
        outcomes[id(job)] = ModelProfile(job.name, job.role, "reused", job.report, REUSED, existing)
    for job, outcome in zip(to_measure, _measure_in_turns(to_measure, settings, force, on_progress), strict=True):
        outcomes[id(job)] = outcome
    return (*settled, *(outcomes[id(job)] for job in jobs))


def _reusable(report: Path, settings: ProfileSettings) -> dict[str, Any] | None:
    """The document in `report` if it is a completed run of these settings (dtype auto matches any dtype)."""
    try:
        document = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("status") != "done":
        return None
    stored = dict(document.get("settings", {}))
    wanted = asdict(settings)
    if settings.dtype == "auto":
        stored.pop("dtype", None)
        wanted.pop("dtype")
    stored["batch_sizes"] = tuple(stored.get("batch_sizes", ()))
    return document if all(stored.get(k) == v for k, v in wanted.items()) else None


def _emit(on_progress: ProgressCallback | None, job: _Job, status: str, number: int = 1, rounds: int = 1) -> None:
    """Report `status` of `job` in round `number`: `done` is the job's index among `total` models."""
    message = ""
    if status in PROGRESS_VERBS:
        where = f"round {number}/{rounds}, " if rounds > 1 and status != "reused" else ""
        message = f"[profile] {where}{job.index + 1}/{job.total} {job.name}: {PROGRESS_VERBS[status]}"
    report(on_progress, Progress("profile", message, job.name, job.index, job.total, "", status, number, rounds))


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
