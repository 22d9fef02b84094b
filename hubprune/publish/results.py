"""What was measured, as typed read-only views: one of a model's eval.json, one of its profile.json, and the
per-model results the cards and the collection notes are written from.

The measuring stages write these files as plain JSON for any reader; this module is the one place that knows
their layout, so that the cards, the push notes and the CLI's summaries read the same fields the same way and a
change of layout is a change here only. Views never change what they read, and never guess: a figure that
was not recorded is None. A value that is not a finite number (a failed metric, NaN) counts as not measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubprune import manifest
from hubprune.errors import CardError
from hubprune.measure.base_model import BASE_RESULTS


@dataclass(frozen=True)
class TaskScore:
    """One benchmark's result in eval.json."""

    task: str
    metric: str  # lm-eval's "name,filter", e.g. "acc,none"
    value: float
    stderr: float | None  # lm-eval's standard error, when it reports a finite one
    higher_is_better: bool | None
    num_fewshot: int
    limit: float | None  # scored on the first `limit` samples only; None: the whole benchmark
    effective_samples: int | None = None  # the samples scored...
    original_samples: int | None = None  # ...of the benchmark's

    @property
    def metric_name(self) -> str:
        """The metric without lm-eval's filter: "acc" of "acc,none"."""
        return self.metric.split(",")[0]

    @classmethod
    def from_record(cls, task: str, record: dict[str, Any]) -> TaskScore:
        stderr = record.get("stderr")
        samples = record.get("n_samples") or {}
        return cls(
            task=task,
            metric=record["metric"],
            value=record["value"],
            stderr=stderr if _finite(stderr) else None,
            higher_is_better=record.get("higher_is_better"),
            num_fewshot=record.get("num_fewshot") or 0,
            limit=record.get("limit"),
            effective_samples=samples.get("effective"),
            original_samples=samples.get("original"),
        )


@dataclass(frozen=True)
class EvalView:
    """A model's eval.json: its scores and the settings and software they were measured with."""

    tasks: dict[str, TaskScore]  # in the file's order; only the finite values
    lm_eval_version: str | None = None
    suite: str | None = None
    backend: str | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: str | int | None = None
    hardware: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # package -> version

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> EvalView:
        return cls(
            tasks={
                task: TaskScore.from_record(task, record)
                for task, record in (document.get("tasks") or {}).items()
                if _finite(record.get("value"))
            },
            lm_eval_version=document.get("lm_eval_version"),
            suite=document.get("suite"),
            backend=document.get("backend"),
            device=document.get("device"),
            dtype=document.get("dtype"),
            batch_size=document.get("batch_size"),
            hardware=document.get("hardware"),
            versions=dict(document.get("versions") or {}),
        )


@dataclass(frozen=True)
class BatchFigures:
    """The figures of one batch size in profile.json: medians over the timed runs of every round."""

    batch_size: int
    ttft_s: float
    decode_tokens_per_s: float
    e2e_s: float
    peak_memory_bytes: int | None
    joules_per_token: float | None
    energy_method: str | None  # "measured", "estimated" or "unavailable"
    other_cpu_load: float | None  # CPUs kept busy by other work meanwhile: near 0 for trustworthy figures
    peak_memory_how: str | None = None  # what "peak memory" means on this device
    energy_source: str | None = None  # the counter or model the energy came from
    energy_reason: str | None = None  # why energy was not measured
    # figure ("ttft", "decode_throughput", "e2e_latency") -> coefficient of variation of the rounds' medians;
    # none with a single round
    spread: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_record(cls, batch: dict[str, Any]) -> BatchFigures:
        peak = batch.get("peak_memory") or {}
        energy = batch.get("energy_per_token") or {}
        return cls(
            batch_size=batch["batch_size"],
            ttft_s=batch["ttft"]["median"],
            decode_tokens_per_s=batch["decode_throughput"]["median"],
            e2e_s=batch["e2e_latency"]["median"],
            peak_memory_bytes=peak.get("value"),
            joules_per_token=energy.get("value"),
            energy_method=energy.get("method"),
            other_cpu_load=(batch.get("other_cpu_load") or {}).get("value"),
            peak_memory_how=peak.get("how"),
            energy_source=energy.get("source"),
            energy_reason=energy.get("reason"),
            spread={
                figure: value
                for figure, value in (batch.get("spread_between_rounds") or {}).items()
                if isinstance(value, float)  # the entry also holds its unit and how, as text
            },
        )


@dataclass(frozen=True)
class ProfileView:
    """A model's profile.json: one BatchFigures per batch size, and the machine and settings they were measured
    with. A profile that was skipped has no batches."""

    batches: tuple[BatchFigures, ...]
    device: str | None = None
    gpu: str | None = None
    cpu_model: str | None = None
    cpus_usable: int | None = None
    versions: dict[str, str] = field(default_factory=dict)  # torch and transformers, as profiled
    dtype: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    min_runs: int | None = None
    rounds: int = 1  # fresh processes per model, their runs pooled

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ProfileView:
        environment = document.get("environment") or {}
        settings = document.get("settings") or {}
        return cls(
            batches=tuple(BatchFigures.from_record(b) for b in document.get("batches") or []),
            device=environment.get("device"),
            gpu=environment.get("gpu"),
            cpu_model=environment.get("cpu_model"),
            cpus_usable=environment.get("cpus_usable"),
            versions={p: environment[p] for p in ("torch", "transformers") if p in environment},
            dtype=settings.get("dtype"),
            prompt_tokens=settings.get("prompt_tokens"),
            new_tokens=settings.get("new_tokens"),
            min_runs=settings.get("min_runs"),
            rounds=settings.get("rounds", 1),
        )

    def batch(self, size: int) -> BatchFigures | None:
        return next((b for b in self.batches if b.batch_size == size), None)


@dataclass(frozen=True)
class ModelResults:
    """What was measured for one model of the family (the base or a member)."""

    name: str
    ratio: float
    width: int
    params: int
    weight_bytes: int
    folder: Path | None  # None for the base, whose weights are not in the family
    evaluation: EvalView | None = None  # None: no eval.json
    profile: ProfileView | None = None  # None: not profiled, or the profile did not finish
    profile_note: str | None = None  # why there is no profile (e.g. the base was skipped)

    @property
    def scores(self) -> dict[str, TaskScore]:
        return self.evaluation.tasks if self.evaluation else {}

    def value(self, task: str) -> float | None:
        score = self.scores.get(task)
        return None if score is None else score.value

    def batch(self, size: int) -> BatchFigures | None:
        return self.profile.batch(size) if self.profile else None


def collect_results(family_dir: Path, family: manifest.Family) -> tuple[ModelResults, list[ModelResults]]:
    """The base and every built member (widest first) with the results files found for each."""
    source = family.source
    base = _with_results(
        ModelResults(
            "base",
            source.intermediate_size / source.hidden_size,
            source.intermediate_size,
            source.params_total,
            source.weight_bytes,
            None,
        ),
        family_dir / BASE_RESULTS,
    )
    members = []
    for record in family.built_members():
        folder = family_dir / record.path
        if not (folder / "config.json").exists():
            continue
        model = ModelResults(
            record.name, record.ratio, record.intermediate_size, record.params_total, record.weight_bytes, folder
        )
        members.append(_with_results(model, folder / "results"))
    return base, members


def benchmarks(models: list[ModelResults]) -> list[TaskScore]:
    """Every task measured, in the order the results list them (base first): the first score found for each,
    whose task, metric and direction name a column of the cards' tables."""
    found: dict[str, TaskScore] = {}
    for model in models:
        for task, score in model.scores.items():
            found.setdefault(task, score)
    return list(found.values())


def _with_results(model: ModelResults, results: Path) -> ModelResults:
    evaluation = _read_json(results / "eval.json")
    profile = _read_json(results / "profile.json")
    note = None
    if profile is not None and profile.get("status") != "done":
        note = profile.get("reason") or f"profiling status {profile.get('status')!r}"
        profile = None
    return ModelResults(
        model.name,
        model.ratio,
        model.width,
        model.params,
        model.weight_bytes,
        model.folder,
        evaluation=EvalView.from_document(evaluation) if evaluation else None,
        profile=ProfileView.from_document(profile) if profile is not None else None,
        profile_note=note,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"cannot read {path} ({exc}): run the stage that writes it again") from None
    return data if isinstance(data, dict) else None
