"""The `hubprune` command: parse, call one library function, report. Only this module prints or exits."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__, manifest
from .build import PruneSettings, build_family, make_plan, prune_one
from .calibrate import DEFAULT_TOKENS, CalibrationSettings, calibration_text, shared_ngrams
from .card import CardOutcome, CardSettings, change_text, is_fraction, render_cards, score_text
from .check import CheckOutcome, CheckSettings, check_criteria
from .errors import CriterionError, HubpruneError, TargetError
from .evaluate import EvalOutcome, EvalSettings, check_settings, evaluate, plan_tasks
from .gguf_source import is_embedded_default
from .hub import PushOutcome, PushSettings, push_family
from .importance import CRITERIA, DATA_CRITERIA, check_criterion
from .measure import ProfileSettings, parse_batch_sizes
from .measure import check_settings as check_profile_settings
from .offline_tasks import evaluated_documents
from .plan import PAPER_PCTS, FamilyPlan, Target, parse_targets
from .profile import ModelProfile, ProfileEvent, headline, profile_path
from .source import open_source
from .writer import DEFAULT_MAX_SHARD_BYTES

SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected library errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HubpruneError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was kept; run the same command again to finish", err=True)
            sys.exit(130)

    return wrapper


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in SIZE_UNITS:
        raise click.BadParameter(f"{text!r} is not a size: use e.g. 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


def _family_targets(ratios: str | None, pcts: str | None, sizes: str | None, preset: str | None) -> list[Target]:
    given = [(kind, text) for kind, text in (("ratio", ratios), ("pct", pcts), ("size", sizes)) if text is not None]
    if preset is not None:
        given.append(("pct", ",".join(PAPER_PCTS)))
    if len(given) != 1:
        raise TargetError("give exactly one of --ratios, --pcts, --sizes or --preset paper")
    kind, text = given[0]
    return parse_targets(kind, text)  # type: ignore[arg-type]


def _progress(title: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A byte progress bar on stderr, announced by `title` once work starts (after every check has passed)."""
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            click.echo(title, err=True)
            bar["bar"] = tqdm(total=total, unit="B", unit_scale=True, desc="prune", file=sys.stderr, disable=None)
        bar["bar"].update(done - bar["bar"].n)

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return update, close


def _human_bytes(count: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plan_table(
    plan: FamilyPlan, paths: dict[str, str] | None = None, scores: tuple[str, dict[str, str]] | None = None
) -> str:
    shape = plan.shape
    header = ["member", "target", "ratio", "width", "params", "MLP params", "size", "params vs base"]
    if scores:
        header.append(scores[0])
    if paths:
        header.append("path")
    rows = [header]
    base = [
        "(base)",
        "-",
        f"{shape.intermediate_size / shape.hidden_size:.2f}",
        str(shape.intermediate_size),
        f"{shape.params_total / 1e6:.2f}M",
        f"{shape.params_mlp / 1e6:.2f}M",
        _human_bytes(shape.weight_bytes),
        "-",
    ]
    if scores:
        base.append(scores[1].get("base", "not measured"))
    rows.append(base + ([""] if paths else []))
    for m in plan.members:
        change = (m.params_total - shape.params_total) / shape.params_total * 100
        row = [
            m.name,
            m.target.describe(),
            f"{m.ratio:.2f}",
            str(m.intermediate_size),
            f"{m.params_total / 1e6:.2f}M",
            f"{m.params_mlp / 1e6:.2f}M",
            _human_bytes(m.weight_bytes),
            f"{change:+.1f}%",
        ]
        if scores:
            row.append(scores[1].get(m.name, "not measured"))
        if paths:
            row.append(paths[m.name])
        rows.append(row)
    return _table(rows)


source_argument = click.argument("source", required=False)
revision_option = click.option("--revision", help="Hub branch, tag or commit (Hub sources only).")
criterion_option = click.option(
    "--criterion", default="maw", show_default=True, help=f"Neuron importance: {', '.join(CRITERIA)}."
)
calibration_option = click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="Calibration text of the activation and hybrid criteria (default: part of the text hubprune ships).",
)
calibration_tokens_option = click.option(
    "--calibration-tokens",
    "calibration_tokens",
    type=click.IntRange(min=2),
    default=DEFAULT_TOKENS,
    show_default=True,
    help="Tokens of the calibration text read.",
)


def _calibration(path: Path | None, tokens: int) -> CalibrationSettings:
    return CalibrationSettings(text=path, max_tokens=tokens)


seed_option = click.option("--seed", type=int, default=None, help="Seed of the random criterion (default 0).")
multiple_option = click.option(
    "--multiple-of", type=click.IntRange(min=1), default=None, help="Round every width to the nearest multiple of N."
)
shard_option = click.option(
    "--max-shard-size",
    "max_shard_size",
    default=f"{DEFAULT_MAX_SHARD_BYTES // 2**30}GiB",
    show_default=True,
    help="Largest safetensors shard written.",
)


def _family_target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--ratios", help="Expansion ratios intermediate/hidden, e.g. 3.6,2.4,1.6."),
            click.option("--pcts", help="Percentages of MLP width to remove, e.g. 10,20,40."),
            click.option("--sizes", help="Explicit intermediate sizes, e.g. 6144,4096."),
            click.option(
                "--preset", type=click.Choice(["paper"]), help="paper: 10,20,30,40,50,60 % (arXiv 2512.22671)."
            ),
        ]
    ):
        func = option(func)
    return func


def _card_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--namespace", help="Hub user or organisation the members are published under (repo ids in the cards)."
        ),
        click.option("--license", "license_id", help="Hub licence id of the base (e.g. apache-2.0), when not found."),
        click.option("--license-name", "license_name", help="With --license other: the licence's name."),
        click.option("--license-link", "license_link", help="With --license other: its URL (or LICENSE file)."),
        click.option("--base-model", "base_model", help="Hub id of the base, when the source is a local folder."),
        click.option(
            "--template-dir",
            "template_dir",
            type=click.Path(path_type=Path),
            help="Folder of card templates that replace the built-in ones of the same name.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _card_settings(options: dict[str, Any]) -> CardSettings:
    return CardSettings(
        namespace=options.pop("namespace"),
        license=options.pop("license_id"),
        license_name=options.pop("license_name"),
        license_link=options.pop("license_link"),
        base_model=options.pop("base_model"),
        template_dir=options.pop("template_dir"),
    )


def _card_report(outcome: CardOutcome) -> None:
    for warning in outcome.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"cards: {outcome.family_card} and {len(outcome.member_cards)} member cards")


def _typed_command() -> str:
    """The running command with the options the user gave (defaults left out), for the cards' reproducibility
    section. Rebuilt from Click's parse, not sys.argv, so it is the same however the command was invoked."""
    ctx = click.get_current_context()
    parts = ["hubprune", ctx.info_name or ""]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        value = ctx.params.get(param.name or "")
        if source not in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            continue
        if isinstance(param, click.Argument):
            parts += [] if value is None else [str(value)]
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            parts += [flag] if value else [*param.secondary_opts[:1]]
        elif getattr(param, "multiple", False):
            parts += [word for item in value or () for word in (flag, str(item))]
        elif value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _record_command(folder: Path, stage: str) -> None:
    if (folder / manifest.MANIFEST).exists():
        manifest.record_command(folder, stage, _typed_command())


def _return_large_buffers_to_the_system() -> None:
    """Make glibc give every buffer of 1 MiB or more back to the system as soon as it is freed.

    By default glibc raises its mmap threshold after each large free, so the 16 MiB chunks the pruner
    streams end up cached in per-thread heaps: peak RSS then grows with the number of members written in
    parallel (about 0.5 GiB instead of 0.3 GiB for six members of a 1B model), for no gain in speed.
    The process belongs to the CLI, so this is set here and not in the library.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    m_mmap_threshold = -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1024 * 1024)


def _eval_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--suite",
                default="auto",
                show_default=True,
                help="Built-in suite (paper, quick, offline) or a suite YAML; auto: offline when the Hub is "
                "off or the source is the embedded default, else paper.",
            ),
            click.option("--tasks", "eval_tasks", help="Only these lm-eval tasks, comma-separated."),
            click.option(
                "--include-path",
                "include_paths",
                multiple=True,
                type=click.Path(path_type=Path),
                help="Folder of local lm-eval task YAMLs (run with the Hub off).",
            ),
            click.option("--limit", type=int, default=None, help="At most N documents per task (indicative results)."),
            click.option("--batch-size", default="auto", show_default=True, help="auto or a positive integer."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
            click.option(
                "--dtype",
                default="auto",
                show_default=True,
                help="auto (bfloat16 on GPU, float32 on CPU), bfloat16 or float32.",
            ),
            click.option("--backend", default="hf", show_default=True, help="hf, or vllm (the vllm extra)."),
            click.option("--tensor-parallel-size", default=1, show_default=True, help="vLLM tensor parallelism."),
            click.option("--data-parallel-size", default=1, show_default=True, help="vLLM data parallelism."),
        ]
    ):
        func = option(func)
    return func


def _eval_settings(options: dict[str, Any]) -> EvalSettings:
    return EvalSettings(
        suite=options["suite"],
        tasks=tuple(t.strip() for t in options["eval_tasks"].split(",") if t.strip()) if options["eval_tasks"] else (),
        include_paths=tuple(options["include_paths"]),
        limit=options["limit"],
        batch_size=str(options["batch_size"]),
        device=options["device"],
        dtype=options["dtype"],
        backend=options["backend"],
        tensor_parallel_size=options["tensor_parallel_size"],
        data_parallel_size=options["data_parallel_size"],
    )


def _profile_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes to profile."),
            click.option("--prompt-tokens", default=256, show_default=True, help="Prompt length (tokens)."),
            click.option("--new-tokens", default=64, show_default=True, help="Generated tokens per sequence."),
            click.option(
                "--min-seconds", default=10.0, show_default=True, help="Least timed seconds per batch size, all rounds."
            ),
            click.option(
                "--rounds",
                default=3,
                show_default=True,
                help="Fresh processes per model, the models taking turns; the figures pool them.",
            ),
            click.option(
                "--energy", default="auto", show_default=True, help="auto, nvml, rapl, codecarbon (an estimate) or off."
            ),
        ]
    ):
        func = option(func)
    return func


def _profile_settings(options: dict[str, Any]) -> ProfileSettings:
    return ProfileSettings(
        device=options["device"],
        dtype=options["dtype"],
        batch_sizes=parse_batch_sizes(options["batch_sizes"]),
        prompt_tokens=options["prompt_tokens"],
        new_tokens=options["new_tokens"],
        min_seconds=options["min_seconds"],
        rounds=options["rounds"],
        energy=options["energy"],
    )


PROFILE_VERBS = {
    "start": "measuring",
    "resumed": "kept from the stopped run",
    "reused": "kept (same settings)",
    "skipped": "skipped",
    "failed": "failed",
}


def _profile_event(event: ProfileEvent) -> None:
    if event.status in PROFILE_VERBS:
        rounds = f"round {event.round}/{event.rounds}, " if event.rounds > 1 and event.status != "reused" else ""
        click.echo(
            f"[profile] {rounds}{event.index + 1}/{event.total} {event.name}: {PROFILE_VERBS[event.status]}", err=True
        )


def _profile_table(profiles: tuple[ModelProfile, ...]) -> str:
    rows = [["model", "batch", "TTFT", "decode tok/s", "end-to-end", "peak memory", "J/token"]]
    for item in profiles:
        if item.document is None or item.status == "skipped":
            rows.append([item.name, "-", f"not measured: {item.reason}", "", "", "", ""])
            continue
        for line in headline(item.document):
            memory = _human_bytes(line.peak_memory_bytes) if line.peak_memory_bytes else "not measured"
            energy = f"{line.joules_per_token:.3g}" if line.joules_per_token is not None else "not measured"
            rows.append(
                [
                    item.name,
                    str(line.batch_size),
                    f"{line.ttft_s * 1000:.0f} ms",
                    f"{line.decode_tokens_per_s:.1f}",
                    f"{line.e2e_s:.2f} s",
                    memory,
                    energy,
                ]
            )
    return _table(rows)


def _stage_message(message: str) -> None:
    click.echo(message, err=True)


def _evaluate_quietly(path: Path, settings: EvalSettings) -> EvalOutcome:
    """evaluate(), with what lm-eval print()s sent to stderr so that stdout holds only hubprune's tables."""
    with contextlib.redirect_stdout(sys.stderr):
        return evaluate(path, settings, on_progress=_stage_message)


def _results_table(outcome: EvalOutcome) -> str:
    tasks = [t.task for t in outcome.tasks]
    rows = [["model", *tasks]]
    for label, record in outcome.results.items():
        rows.append([label, *(_format_value(record["tasks"].get(task)) for task in tasks)])
    return _table(rows)


def _headline_scores(outcome: EvalOutcome) -> tuple[str, dict[str, str]]:
    """The suite's first task, per model, with its change against the base where the base was measured, written
    as the cards write it."""
    task = outcome.tasks[0].task
    found = {label: record["tasks"].get(task) for label, record in outcome.results.items()}
    measured = [r for r in found.values() if r is not None]
    higher_is_better = measured[0].get("higher_is_better") if measured else None
    fraction = is_fraction(outcome.tasks[0].metric, higher_is_better, [r["value"] for r in measured])
    base = found.get("base")
    scores = {}
    for label, result in found.items():
        text = score_text(result, fraction)
        if result is not None and base is not None and label != "base":
            text += f" ({change_text(result, base, fraction)})"
        scores[label] = text
    return f"{task} ({outcome.tasks[0].metric.split(',')[0]})", scores


def _format_value(result: dict[str, Any] | None) -> str:
    if result is None:
        return "not measured"
    value = result["value"]
    stderr = f" ±{result['stderr']:.3g}" if result.get("stderr") else ""
    return f"{value:.4g}{stderr}"


def _quiet_libraries() -> None:
    """Keep the terminal for hubprune's own progress: lm-eval and transformers log every task default they
    apply and draw a bar for every weight load. Warnings and errors still show."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("lm_eval", "lm-eval", "transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@click.group()
@click.version_option(__version__, prog_name="hubprune")
def main() -> None:
    """Build a family of width-pruned GLU checkpoints that load with plain from_pretrained."""
    _return_large_buffers_to_the_system()
    _quiet_libraries()


@main.command()
@source_argument
@_family_target_options
@multiple_option
@revision_option
@_handle_errors
def plan(
    source: str | None,
    ratios: str | None,
    pcts: str | None,
    sizes: str | None,
    preset: str | None,
    multiple_of: int | None,
    revision: str | None,
) -> None:
    """Print the members a build would write (width, parameters, size); write nothing."""
    targets = _family_targets(ratios, pcts, sizes, preset)
    checkpoint = open_source(source, revision=revision)
    _, family_plan = make_plan(checkpoint, targets, multiple_of)
    click.echo(_plan_table(family_plan))


@main.command()
@source_argument
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="New folder to write.")
@click.option("--ratio", help="Expansion ratio intermediate/hidden, e.g. 2.4.")
@click.option("--pct", help="Percentage of MLP width to remove, e.g. 40.")
@click.option("--intermediate-size", "intermediate_size", help="Explicit intermediate size, e.g. 4096.")
@criterion_option
@calibration_option
@calibration_tokens_option
@seed_option
@multiple_option
@shard_option
@revision_option
@_handle_errors
def prune(
    source: str | None,
    output: Path,
    ratio: str | None,
    pct: str | None,
    intermediate_size: str | None,
    criterion: str,
    calibration: Path | None,
    calibration_tokens: int,
    seed: int | None,
    multiple_of: int | None,
    max_shard_size: str,
    revision: str | None,
) -> None:
    """Write one pruned checkpoint."""
    given = [(k, v) for k, v in (("ratio", ratio), ("pct", pct), ("size", intermediate_size)) if v is not None]
    if len(given) != 1:
        raise TargetError("give exactly one of --ratio, --pct or --intermediate-size")
    target = parse_targets(given[0][0], given[0][1])  # type: ignore[arg-type]
    if len(target) != 1:
        raise TargetError("prune writes one checkpoint: give one width (use build-family for several)")
    checkpoint = open_source(source, revision=revision)
    settings = PruneSettings(
        criterion, seed, multiple_of, _parse_size(max_shard_size), _calibration(calibration, calibration_tokens)
    )
    update, close = _progress(f"[prune] {checkpoint.source} -> {output} ({criterion}, one streaming pass)")
    try:
        member = prune_one(checkpoint, output, target[0], settings, on_progress=update)
    finally:
        close()
    click.echo(
        f"wrote {output}: intermediate size {member.intermediate_size} (ratio {member.ratio:.2f}), "
        f"{member.params_total / 1e6:.2f}M parameters, {_human_bytes(member.weight_bytes)}"
    )


@main.command("build-family")
@source_argument
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="Family folder.")
@_family_target_options
@criterion_option
@calibration_option
@calibration_tokens_option
@seed_option
@multiple_option
@shard_option
@revision_option
@click.option("--force", is_flag=True, help="Write into a non-empty folder that is not a hubprune family.")
@click.option("--skip-eval", is_flag=True, help="Do not run the benchmarks stage.")
@click.option("--skip-profile", is_flag=True, help="Do not run the efficiency profiling stage.")
@click.option(
    "--check-criteria",
    "check_first",
    is_flag=True,
    help="First compare the criterion with random pruning (3 seeds) at every width; the table goes in the cards.",
)
@_eval_options
@_profile_options
@_card_options
@_handle_errors
def build_family_command(
    source: str | None,
    output: Path,
    ratios: str | None,
    pcts: str | None,
    sizes: str | None,
    preset: str | None,
    criterion: str,
    calibration: Path | None,
    calibration_tokens: int,
    seed: int | None,
    multiple_of: int | None,
    max_shard_size: str,
    revision: str | None,
    force: bool,
    skip_eval: bool,
    skip_profile: bool,
    check_first: bool,
    **stage_options: Any,
) -> None:
    """Prune at every width in one streaming pass and write the family with its manifest (family.json), then
    benchmark and profile the base and every member and render the model cards."""
    targets = _family_targets(ratios, pcts, sizes, preset)
    card_settings = _card_settings(stage_options)
    eval_settings = _eval_settings(stage_options)
    profile_settings = _profile_settings(stage_options)
    if not skip_eval:  # refuse bad stage options before anything is written
        check_settings(eval_settings)
    if not skip_profile:
        check_profile_settings(profile_settings)
    checkpoint = open_source(source, revision=revision)
    if not skip_eval:  # unknown tasks or missing task data stop the build before anything is written
        tasks = plan_tasks(eval_settings, embedded_default=is_embedded_default(checkpoint.origin)).tasks
        if check_criterion(criterion) in DATA_CRITERIA:
            _warn_if_calibration_is_evaluated(_calibration(calibration, calibration_tokens), tasks)
    settings = PruneSettings(
        criterion, seed, multiple_of, _parse_size(max_shard_size), _calibration(calibration, calibration_tokens)
    )
    check = None
    if check_first and check_criterion(criterion) == "random":
        raise CriterionError("--check-criteria compares the criterion with random pruning: choose another --criterion")
    if check_first:
        criteria = (criterion, "random")
        click.echo(f"[check] {criterion} against random pruning at every width", err=True)
        comparison = CheckSettings(
            targets=tuple(targets), criteria=criteria, calibration=settings.calibration or CalibrationSettings()
        )
        check = check_criteria(checkpoint, comparison)
        click.echo(_check_table(check))
        for warning in check.warnings():
            click.echo(f"warning: {warning}", err=True)
    update, close = _progress(f"[prune] {checkpoint.source} -> {output} ({criterion}, one streaming pass)")
    try:
        build_family(checkpoint, output, targets, settings, force=force, on_progress=update)
    finally:
        close()
    if check is not None:
        manifest.record_analysis(output, criteria_check=check.to_dict())
    _record_command(output, "build-family")
    scores = None
    if not skip_eval:
        outcome = _evaluate_quietly(output, eval_settings)
        click.echo(_results_table(outcome))
        scores = _headline_scores(outcome)
    if not skip_profile:
        click.echo(_profile_table(profile_path(output, profile_settings, on_progress=_profile_event)))
    _, family_plan = make_plan(checkpoint, targets, multiple_of)
    paths = {m.name: str(output / m.name) for m in family_plan.members}
    click.echo(_plan_table(family_plan, paths, scores))
    _card_report(render_cards(output, card_settings))
    click.echo(f"manifest: {output / 'family.json'}")
    namespace = card_settings.namespace or "YOUR-HF-NAMESPACE"
    click.echo(f"next, publish it: {shlex.join(['hubprune', 'push', str(output), '--namespace', namespace])}")


@main.command("profile")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--dtype", default="auto", show_default=True, help="auto (as stored), float32 or bfloat16.")
@_profile_options
@click.option("--force", is_flag=True, help="Measure again even where profile.json has these settings.")
@_handle_errors
def profile_command(path: Path, force: bool, **options: Any) -> None:
    """Measure latency, throughput, memory and energy of a family (base and every member) or one checkpoint,
    each model in a fresh process."""
    profiles = profile_path(path, _profile_settings(options), force=force, on_progress=_profile_event)
    _record_command(path, "profile")
    click.echo(_profile_table(profiles))


@main.command("eval")
@click.argument("path", type=click.Path(path_type=Path))
@_eval_options
@_handle_errors
def eval_command(path: Path, **eval_options: Any) -> None:
    """Run lm-eval benchmarks on a family (its base and every member) or on one checkpoint folder."""
    outcome = _evaluate_quietly(path, _eval_settings(eval_options))
    _record_command(path, "eval")
    click.echo(_results_table(outcome))


@main.command("card")
@click.argument("family", type=click.Path(path_type=Path))
@_card_options
@_handle_errors
def card_command(family: Path, **card_options: Any) -> None:
    """Render the model card (README.md and plots) of every member and of the family from what was measured."""
    settings = _card_settings(card_options)
    _card_report(render_cards(family, settings))


@main.command("push")
@click.argument("family", type=click.Path(path_type=Path))
@click.option("--namespace", required=True, help="Hub user or organisation to publish under: repos NS/<member>.")
@click.option("--private", is_flag=True, help="Make the repos (existing ones too) and a new collection private.")
@click.option(
    "--collection", "collection", help="Title of the family's collection (default: '<base> width-pruned family')."
)
@click.option("--no-collection", "no_collection", is_flag=True, help="Publish the repos without a collection.")
@click.option("--members", help="Only these members, comma-separated names.")
@click.option("--revision", help="Branch to commit to, created if missing (default: the repo's default branch).")
@click.option("--commit-message", "commit_message", help="Message of each member's commit.")
@click.option("--force", is_flag=True, help="Overwrite repos that exist and were not made by hubprune.")
@click.option("--dry-run", "dry_run", is_flag=True, help="Print what would be created and uploaded; no network.")
@_handle_errors
def push_command(
    family: Path,
    namespace: str,
    private: bool,
    collection: str | None,
    no_collection: bool,
    members: str | None,
    revision: str | None,
    commit_message: str | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Publish every member as the Hub repo NAMESPACE/<member> (one commit each) and the family as a collection.
    The token comes from HF_TOKEN or `hf auth login`."""
    if collection and no_collection:
        raise TargetError("give --collection TITLE or --no-collection, not both")
    settings = PushSettings(
        namespace=namespace,
        private=private,
        collection=collection,
        make_collection=not no_collection,
        members=tuple(n.strip() for n in members.split(",") if n.strip()) if members else (),
        revision=revision,
        commit_message=commit_message,
        force=force,
        dry_run=dry_run,
    )
    _push_report(push_family(family, settings, on_progress=_stage_message))


def _push_report(outcome: PushOutcome) -> None:
    for name, why in outcome.skipped:
        click.echo(f"skipped {name}: {why}", err=True)
    if outcome.dry_run:
        click.echo("dry run: nothing was sent. A push would create each repo if missing and upload these files")
        click.echo("(files the repo already holds unchanged are skipped, files not listed are deleted from it):")
    rows = [["repo", "status", "files", "size", "commit"]]
    for member in outcome.members:
        size = _human_bytes(sum(f.size for f in member.files)) if member.files else "-"
        rows.append([member.repo_id, member.status, str(len(member.files) or "-"), size, member.commit or "-"])
    click.echo(_table(rows))
    if outcome.dry_run:
        if outcome.cards_rendered:
            click.echo("README.md and plots/ of every member would first be rendered again for this namespace.")
        for member in outcome.members:
            click.echo(f"{member.repo_id}:")
            for upload in member.files:
                click.echo(f"  {upload.path}  {_human_bytes(upload.size)}")
        if outcome.collection_title:
            click.echo(f"collection {outcome.collection_title!r}, in this order:")
            for repo_id, note in outcome.collection_items:
                click.echo(f"  {repo_id}: {note}")
        return
    if outcome.collection_url:
        click.echo(f"collection: {outcome.collection_url}")
    first = outcome.members[0].repo_id
    click.echo(f'load one: AutoModelForCausalLM.from_pretrained("{first}")')


@main.command("check-criteria")
@source_argument
@click.option(
    "--text", type=click.Path(path_type=Path), help="Held-out text (default: part of the text hubprune ships)."
)
@click.option("--pcts", default="10,20", show_default=True, help="MLP width percentages to remove.")
@click.option("--criteria", default="maw,activation,random", show_default=True, help="Criteria to compare.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds of random pruning.")
@click.option("--tokens", type=click.IntRange(min=2), default=8192, show_default=True, help="Held-out tokens read.")
@calibration_option
@calibration_tokens_option
@revision_option
@_handle_errors
def check_criteria_command(
    source: str | None,
    text: Path | None,
    pcts: str,
    criteria: str,
    seeds: int,
    tokens: int,
    calibration: Path | None,
    calibration_tokens: int,
    revision: str | None,
) -> None:
    """Perplexity on held-out text of the model pruned by each criterion, every layer, against random pruning
    (median and range over the seeds); warns about any criterion that does worse than random."""
    settings = CheckSettings(
        text=text,
        pcts=tuple(p.strip() for p in pcts.split(",") if p.strip()),
        criteria=tuple(c.strip() for c in criteria.split(",") if c.strip()),
        seeds=seeds,
        max_tokens=tokens,
        calibration=_calibration(calibration, calibration_tokens),
    )
    for name in settings.criteria:  # refuse a typo before loading anything
        check_criterion(name)
    checkpoint = open_source(source, revision=revision)
    click.echo(f"[check] {checkpoint.source}: {', '.join(settings.criteria)} at {pcts} % removed", err=True)
    outcome = check_criteria(checkpoint, settings)
    click.echo(_check_table(outcome))
    for warning in outcome.warnings():
        click.echo(f"warning: {warning}", err=True)


def _warn_if_calibration_is_evaluated(calibration: CalibrationSettings, tasks: list[Any]) -> None:
    """Calibration text that the benchmarks also score flatters the data-aware criteria: say so. Only the offline
    suite's texts are on this machine to compare with; Hub tasks are not checked."""
    documents = evaluated_documents([(t.task, t.limit) for t in tasks])
    shared = shared_ngrams(calibration_text(calibration)[0], documents) if documents else 0
    if shared:
        click.echo(
            f"warning: the calibration text shares 13-word sequences with {shared} of the {len(documents)} offline "
            "benchmark documents: those scores flatter the criterion; calibrate on a disjoint text",
            err=True,
        )


def _check_table(outcome: CheckOutcome) -> str:
    rows = [["criterion", "removed", "width", "perplexity", "vs random median"]]
    rows.append(["(base)", "0%", "-", f"{outcome.base_perplexity:.4g}", "-"])
    medians = {r.pct: r.perplexity for r in outcome.rows if r.criterion == "random"}
    for row in outcome.rows:
        if row.criterion == "random":
            value = f"{row.perplexity:.4g} [{row.low:.4g}, {row.high:.4g}]"
            versus = "-"
        else:
            value = f"{row.perplexity:.4g}"
            versus = f"{row.perplexity / medians[row.pct]:.3g}x" if row.pct in medians else "-"
        rows.append([row.criterion, f"{row.pct}%", str(row.width), value, versus])
    lines = [_table(rows), f"held-out text: {outcome.text['source']}, {outcome.text['tokens']} tokens"]
    if outcome.calibration:
        lines.append(f"calibration: {outcome.calibration['source']}, {outcome.calibration['tokens']} tokens")
        if outcome.shared_documents == 0:
            lines.append("calibration and held-out texts share no 13-word sequence")
    return "\n".join(lines)
