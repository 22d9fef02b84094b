"""Benchmarks through lm-eval: suites, one model load per model, per-task resume, results/eval.json.

A family is evaluated as its base model (when its folder is still on this machine) plus every member, under
identical settings. Each model is loaded once; its tasks run in groups of equal few-shot count, because
lm-eval's num_fewshot applies to a whole call (the paper's own code silently ran every task 0-shot when the
counts were mixed). A task already in eval.json with the same settings is not run again.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hubprune import manifest
from hubprune.device import RuntimeSettings, hardware, on_runtime, resolve_device
from hubprune.errors import EvaluationError
from hubprune.fields import setting
from hubprune.files import write_json_atomic
from hubprune.local_paths import replacements, scrub
from hubprune.measure.base_model import BASE_RESULTS, base_label, locate_base
from hubprune.measure.lm_eval_output import save_raw, task_result
from hubprune.measure.offline_tasks import task_folder
from hubprune.measure.suites import (
    Suite,
    SuiteChoice,
    SuiteTask,
    choose_suite,
    hub_offline,
    hub_problem,
    hub_status,
    load_suite,
)
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.pruning.gguf import cache_root, is_embedded_default

BACKENDS = ("hf", "vllm")
DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class EvalSettings:
    suite: str = setting(
        "auto",
        "Built-in suite (paper, quick, offline) or a suite YAML; auto: offline for the embedded default, with "
        "HF_HUB_OFFLINE set, or where the Hub does not answer (one quick request finds out), else paper.",
    )
    tasks: tuple[str, ...] = setting((), "Only these lm-eval tasks, comma-separated.", parse="list")
    include_paths: tuple[Path, ...] = setting(
        (),
        "Folder of local lm-eval task YAMLs (run with the Hub off); repeat for several.",
        flag="--include-path",
        parse="paths",
    )
    limit: int | None = setting(None, "At most N documents per task (indicative results).")
    batch_size: str = setting("auto", "auto (4 on a CPU, lm-eval's search on a GPU) or a positive integer.")
    device: str = "auto"  # set from the runtime (device.RuntimeSettings) by evaluate
    dtype: str = "auto"
    backend: str = setting("hf", "hf, or vllm (the vllm extra).")
    tensor_parallel_size: int = setting(1, "vLLM tensor parallelism.")
    data_parallel_size: int = setting(1, "vLLM data parallelism.")
    # lm-eval's CLI default is 100000; 1000 resamples estimate a standard error to a few percent, in a fraction
    # of the time on a CPU. Only metrics without a closed-form stderr (perplexities) are bootstrapped.
    bootstrap_iters: int = 1000

    def __post_init__(self) -> None:
        _check_eval_settings(self)


def _check_eval_settings(settings: EvalSettings) -> None:
    """EvalSettings.__post_init__: refuse bad settings before any model is loaded."""
    if settings.limit is not None and settings.limit < 1:
        raise EvaluationError(f"`limit` {settings.limit}: give a whole number of documents >= 1, or leave it out")
    if settings.batch_size != "auto" and not (settings.batch_size.isdigit() and int(settings.batch_size) > 0):
        raise EvaluationError(f"`batch_size` {settings.batch_size!r}: use 'auto' or a positive integer")
    if settings.dtype not in DTYPES:
        raise EvaluationError(
            f"`dtype` {settings.dtype!r}: use one of {', '.join(DTYPES)} (float16 overflows to inf perplexity)"
        )
    if settings.backend not in BACKENDS:
        raise EvaluationError(f"`backend` {settings.backend!r}: use one of {', '.join(BACKENDS)}")
    if settings.tensor_parallel_size < 1 or settings.data_parallel_size < 1:
        raise EvaluationError("`tensor_parallel_size` and `data_parallel_size` must be >= 1")
    for path in settings.include_paths:
        if not Path(path).is_dir():
            raise EvaluationError(f"`include_paths` {path} is not a folder of lm-eval task YAMLs")


def resolve_dtype(dtype: str, device: str) -> str:
    """auto: bfloat16 on GPU, float32 on CPU (where bfloat16 matmuls are slow); never float16."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


CPU_BATCH_SIZE = 4


def resolve_batch_size(batch_size: str, device: str) -> str:
    """auto: lm-eval's search on GPU; a fixed small batch on CPU, where the search runs full-length batches
    through the model for minutes and finds little to gain."""
    if batch_size == "auto" and not device.startswith("cuda"):
        return str(CPU_BATCH_SIZE)
    return batch_size


def vllm_model_args(folder: Path, settings: EvalSettings, dtype: str) -> str:
    """lm-eval's model_args string for its vLLM backend (the optional `vllm` extra)."""
    args = {
        "pretrained": str(folder),
        "dtype": dtype,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "gpu_memory_utilization": 0.9,
    }
    if settings.batch_size != "auto":
        args["batch_size"] = settings.batch_size
    return ",".join(f"{key}={value}" for key, value in args.items())


@dataclass(frozen=True)
class ModelRef:
    """One model to evaluate: a label for progress, its folder, its revision, where its results go, and the
    name its results call it by (never its folder's path: results are published with the member)."""

    label: str
    folder: Path
    revision: str | None
    results: Path
    name: str


@dataclass
class _Plan:
    suite: Suite
    tasks: list[SuiteTask]
    include_paths: list[Path] = field(default_factory=list)
    choice: SuiteChoice | None = None  # what `auto` picked and why; None when the suite was named

    def announcement(self) -> str | None:
        """The one line that says which suite `auto` picked and why."""
        return f"[eval] suite auto: {self.choice.name}, because {self.choice.reason}" if self.choice else None


def plan_tasks(settings: EvalSettings, *, embedded_default: bool = False) -> _Plan:
    """The suite's tasks (or the `tasks` subset), with `limit` applied; unknown tasks, and tasks that cannot run
    here (no Hub for their data, IFEval without its extra or NLTK data), are refused before anything runs."""
    resolve_device(settings.device, EvaluationError)  # a GPU asked for where there is none
    choice = choose_suite(embedded_default) if settings.suite == "auto" else None
    suite = load_suite(choice.name if choice else settings.suite)
    tasks = list(suite.tasks)
    if settings.tasks:
        by_name = {t.task: t for t in tasks}
        tasks = [by_name.get(name, SuiteTask(name, 0, "")) for name in settings.tasks]
    if settings.limit is not None:
        tasks = [SuiteTask(t.task, t.num_fewshot, t.metric, settings.limit) for t in tasks]
    include_paths = [Path(p).resolve() for p in settings.include_paths]
    if any(t.task.startswith("hubprune_") for t in tasks):
        include_paths.append(task_folder(cache_root()))
    names = [t.task for t in tasks]
    _check_task_names(names, include_paths)
    manager = _task_manager(include_paths, names)
    hub_tasks = [name for name in names if not _is_local(name, manager, include_paths)]
    _check_task_requirements(tasks, suite.name if hub_tasks else None)
    return _Plan(suite, tasks, include_paths, choice)


def _task_manager(include_paths: list[Path], names: list[str]) -> Any:
    """A TaskManager that knows `names`: only the local folders when they hold every task (indexing lm-eval's own
    thousands of task YAMLs takes tens of seconds), else those folders plus lm-eval's tasks."""
    if include_paths:
        local = _cached_task_manager(tuple(str(p) for p in include_paths), False)
        if set(names) <= set(local.all_tasks):
            return local
    return _cached_task_manager(tuple(str(p) for p in include_paths), True)


@functools.lru_cache(maxsize=4)
def _cached_task_manager(include_paths: tuple[str, ...], include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=include_defaults)


def _check_task_names(names: list[str], include_paths: list[Path]) -> None:
    known = set(_task_manager(include_paths, names).all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=4)
            hint = f"did you mean {', '.join(close)}?" if close else "list them with `lm-eval ls tasks`"
            raise EvaluationError(f"unknown lm-eval task {name!r}: {hint}")


def models_to_evaluate(path: Path) -> tuple[list[ModelRef], str | None]:
    """The models under `path` (a family: its base when present, then every member; or one checkpoint folder),
    and why the base was left out, if it was."""
    path = Path(path)
    kind = manifest.locate(path).kind
    if kind == "family":
        family = manifest.load(path)
        refs = []
        base, skipped = locate_base(family)
        if base is not None:
            refs.append(ModelRef("base", base, family.source.revision, path / BASE_RESULTS, base_label(family)))
        for member in family.built_members():
            folder = path / member.path
            refs.append(ModelRef(member.name, folder, None, folder / "results", member.name))
        return refs, skipped
    if kind != "unknown":  # a member is evaluated as the checkpoint it is
        name = path.resolve().name
        return [ModelRef(name, path, None, path / "results", name)], None
    raise EvaluationError(manifest.not_a_model(path))


def settings_key(task: SuiteTask, settings: EvalSettings, device: str, dtype: str, lm_eval_version: str) -> str:
    """What decides a task's result; a stored result is reused only when this is unchanged."""
    decisive = {
        "task": task.task,
        "num_fewshot": task.num_fewshot,
        "limit": task.limit,
        "metric": task.metric,
        "dtype": dtype,
        "device": device.split(":")[0],
        "batch_size": settings.batch_size,
        "backend": settings.backend,
        "bootstrap_iters": settings.bootstrap_iters,
        "lm_eval": lm_eval_version,
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalOutcome:
    suite: Suite
    tasks: tuple[SuiteTask, ...]  # what was asked, in suite order
    results: dict[str, dict[str, Any]]  # model label ("base" or a member name) -> its eval.json content


def evaluate(
    path: Path,
    settings: EvalSettings,
    runtime: RuntimeSettings | None = None,
    *,
    command: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> EvalOutcome:
    """Evaluate a family (base + members) or one checkpoint, on the runtime's device and dtype; write
    results/eval.json per model, update family.json (with `command`, the command line that ran this, for the cards'
    reproducibility section)."""
    settings = on_runtime(settings, runtime)
    path = Path(path)
    refs, base_skipped = models_to_evaluate(path)
    is_family = manifest.locate(path).kind == "family"
    embedded = is_family and is_embedded_default(manifest.load(path).source.origin)
    plan = plan_tasks(settings, embedded_default=embedded)
    if plan.announcement():
        report(on_progress, Progress("eval", plan.announcement()))
    device = resolve_device(settings.device, EvaluationError)
    results: dict[str, Any] = {}
    for ref in refs:
        try:
            results[ref.label] = evaluate_model(ref, plan, settings, device, on_progress)
        except BaseException as exc:
            reason = _reason(exc)
            if is_family:  # the models evaluated before this one are recorded done, and kept by the next run
                _record_stage(path, ref.label, status="failed", suite=plan.suite.name, error=reason)
            if not isinstance(exc, Exception):  # an interruption stays one
                raise
            what = f"the base {ref.name}" if ref.label == "base" else f"member {ref.label}" if is_family else ref.name
            again = "; family.json records it: run the same command again to redo it" if is_family else ""
            raise EvaluationError(f"eval of {what} failed: {reason}{again}") from exc
        if is_family:
            _record_stage(path, ref.label, status="done", suite=plan.suite.name, tasks=[t.task for t in plan.tasks])
    if is_family:
        _record_analysis(path, results, base_skipped)
        if command is not None:
            manifest.record_command(path, "eval", command)
    return EvalOutcome(plan.suite, tuple(plan.tasks), results)


def _reason(exc: BaseException) -> str:
    """One line on why a model's evaluation stopped: hubprune's own message, else the exception's type and the first
    line of its message (lm-eval, transformers and torch raise their own)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if isinstance(exc, EvaluationError):
        return first
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def evaluate_model(
    ref: ModelRef, plan: _Plan, settings: EvalSettings, device: str, on_progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Run the plan's tasks on one model (loaded once), skipping tasks already done with the same settings."""
    import lm_eval

    dtype = resolve_dtype(settings.dtype, device)
    settings = replace(settings, batch_size=resolve_batch_size(settings.batch_size, device))
    results_file = ref.results / "eval.json"
    stored = json.loads(results_file.read_text(encoding="utf-8")) if results_file.exists() else {}
    done = stored.get("tasks", {})
    keys = {t.task: settings_key(t, settings, device, dtype, lm_eval.__version__) for t in plan.tasks}
    todo = [t for t in plan.tasks if done.get(t.task, {}).get("settings_key") != keys[t.task]]
    record = {
        "model": {"name": ref.name, "revision": ref.revision},
        "lm_eval_version": lm_eval.__version__,
        "suite": plan.suite.name,
        "dtype": dtype,
        "device": device,
        "batch_size": settings.batch_size,
        "backend": settings.backend,
        "bootstrap_iters": settings.bootstrap_iters,
        "hardware": hardware(device),
        "versions": _versions(),
        "tasks": dict(done),
    }
    if not todo:
        return record
    report(on_progress, Progress("eval", f"[eval] {ref.label}: loading {ref.folder}"))
    lm = _load_model(ref.folder, settings, device, dtype)
    manager = _task_manager(plan.include_paths, [t.task for t in todo])
    # lm-eval's own output names the model's folder and every task file (`config_source`, its own tasks' too, in
    # the environment's site-packages): they become names before it is kept
    local_names = replacements(
        {
            ref.folder: ref.name,
            cache_root(): "$HUBPRUNE_CACHE",
            Path(lm_eval.__file__).parent: "lm_eval",
            **{p: f"tasks:{p.name}" for p in plan.include_paths},
        }
    )
    for shots, group in _by_fewshot(todo):
        tasks = ", ".join(t.task for t in group)
        report(on_progress, Progress("eval", f"[eval] {ref.label}: {tasks} ({shots}-shot)"))
        started = time.perf_counter()
        with _hub_offline(all(_is_local(t.task, manager, plan.include_paths) for t in group)):
            raw = _run_lm_eval(lm, group, shots, manager, settings.bootstrap_iters)
        elapsed = time.perf_counter() - started
        for task in group:
            record["tasks"][task.task] = task_result(raw, task, keys[task.task], elapsed / len(group))
            save_raw(ref.results, task.task, scrub(raw, local_names))
        order = [t.task for t in plan.tasks] + [name for name in record["tasks"] if name not in keys]
        record["tasks"] = {name: record["tasks"][name] for name in order if name in record["tasks"]}  # suite order
        write_json_atomic(results_file, record)  # after every group: a stopped run keeps what it finished
    return record


def _versions() -> dict[str, str]:
    import lm_eval
    import torch
    import transformers

    return {"lm_eval": lm_eval.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def _by_fewshot(tasks: list[SuiteTask]) -> Iterator[tuple[int, list[SuiteTask]]]:
    shots = sorted({t.num_fewshot for t in tasks})
    for count in shots:
        group = [t for t in tasks if t.num_fewshot == count]
        limits = sorted({t.limit for t in group}, key=lambda x: (x is None, x))
        for limit in limits:  # lm-eval's limit also applies to a whole call
            yield count, [t for t in group if t.limit == limit]


def _check_task_requirements(tasks: list[SuiteTask], hub_suite: str | None = None) -> None:
    """Refuse tasks that cannot run here, in one line that names the reason that matters most first: no Hub for a
    suite whose data lives there (`hub_suite`, its name), then IFEval's extra, then IFEval's NLTK data."""
    problems = []
    if hub_suite is not None and not hub_offline() and not (status := hub_status()).answers:
        problems.append(hub_problem(hub_suite, status))
    if any(t.task == "ifeval" or t.task.startswith("leaderboard_ifeval") for t in tasks):
        try:
            import immutabledict  # noqa: F401
            import langdetect  # noqa: F401
        except ImportError:
            problems.append("IFEval needs the ifeval extra (langdetect, immutabledict): pip install 'hubprune[ifeval]'")
        try:
            import nltk

            nltk.data.find("tokenizers/punkt_tab")
        except (ImportError, LookupError):
            problems.append(
                "IFEval needs nltk's punkt_tab data, which hubprune never downloads silently: run "
                "`python -m nltk.downloader punkt_tab`, or set NLTK_DATA to a folder that holds it"
            )
    if problems:
        raise EvaluationError("; also, ".join(problems))


def _load_model(folder: Path, settings: EvalSettings, device: str, dtype: str) -> Any:
    if settings.backend == "vllm":
        from lm_eval.api.registry import get_model

        try:
            return get_model("vllm").create_from_arg_string(vllm_model_args(folder, settings, dtype))
        except ImportError:
            raise EvaluationError("`backend` vllm needs vLLM: pip install 'hubprune[vllm]'") from None
    from lm_eval.models.huggingface import HFLM

    batch = settings.batch_size if settings.batch_size == "auto" else int(settings.batch_size)
    return HFLM(pretrained=str(folder), device=device, dtype=dtype, batch_size=batch)


def _is_local(task: str, manager: Any, include_paths: list[Path]) -> bool:
    """True when the task's YAML lives in an `include_paths` folder (or is one of hubprune's offline tasks)."""
    entry = manager.task_index.get(task)
    yaml_path = getattr(entry, "yaml_path", None)  # an Entry in lm-eval 0.4.10+, a dict before
    if yaml_path is None and isinstance(entry, dict):
        yaml_path = entry.get("yaml_path")
    if not yaml_path or yaml_path == -1:
        return False
    return any(Path(yaml_path).resolve().is_relative_to(folder) for folder in include_paths)


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Switch the Hub and datasets offline for one run. Both libraries copy the variables into module constants
    at import, so those are set too, and everything is restored afterwards."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = [
        (module, name, getattr(module, name))
        for module, name in (
            (huggingface_hub.constants, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
        )
        if hasattr(module, name)
    ]
    os.environ.update({name: "1" for name in names})
    for module, name, _ in saved:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_lm_eval(lm: Any, group: list[SuiteTask], shots: int, manager: Any, bootstrap_iters: int) -> dict[str, Any]:
    from lm_eval import evaluator, simple_evaluate

    # lm-eval records the git commit of the current directory, whatever that is (printing git's "fatal: not a
    # git repository" outside one): it says nothing about the evaluation and would be published with the results.
    saved_hash, evaluator.get_git_commit_hash = evaluator.get_git_commit_hash, lambda: None
    try:
        raw = simple_evaluate(
            model=lm,
            tasks=[t.task for t in group],
            num_fewshot=shots,
            limit=group[0].limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=bootstrap_iters,
        )
    except (ConnectionError, OSError) as exc:
        names = ", ".join(t.task for t in group)
        raise EvaluationError(
            f"the data of {names} could not be loaded ({type(exc).__name__}): these tasks download their datasets "
            "from the Hub; run with network access, or use `suite` offline"
        ) from None
    finally:
        evaluator.get_git_commit_hash = saved_hash
    if raw is None:
        raise EvaluationError("lm-eval returned no results (is this a non-zero rank of a distributed run?)")
    return raw


def _record_stage(family_dir: Path, label: str, **record: Any) -> None:
    if label == "base":  # the base is no member: its status lives with the family-level results
        family = manifest.load(family_dir)
        manifest.save(family.with_analysis(base_eval=record), family_dir)
    else:
        manifest.record_stage(family_dir, label, "eval", **record)


def _record_analysis(family_dir: Path, outcome: dict[str, Any], base_skipped: str | None) -> None:
    table = {
        label: {f"{task}:{r['metric']}": r["value"] for task, r in record["tasks"].items()}
        for label, record in outcome.items()
    }
    family = manifest.load(family_dir)
    family = family.with_analysis(correlations=correlations(table), base_eval_skipped=base_skipped)
    manifest.save(family, family_dir)


def correlations(table: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Pearson r, its two-sided p-value and n for every pair of metrics, over the models that have both.

    Pairs measured on fewer than 3 models get none: with n = 2, r is always +-1 and p is undefined.
    """
    from scipy import stats

    metrics = sorted({m for row in table.values() for m in row})
    found = []
    for i, first in enumerate(metrics):
        for second in metrics[i + 1 :]:
            pairs = [(row[first], row[second]) for row in table.values() if first in row and second in row]
            if len(pairs) < 3:
                continue
            xs, ys = zip(*pairs)
            if len(set(xs)) == 1 or len(set(ys)) == 1:
                found.append({"x": first, "y": second, "n": len(pairs), "r": None, "p": None, "note": "constant"})
                continue
            result = stats.pearsonr(xs, ys)
            found.append({"x": first, "y": second, "n": len(pairs), "r": float(result[0]), "p": float(result[1])})
    return found
