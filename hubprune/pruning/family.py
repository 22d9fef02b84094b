"""Build members from a source: plan, one streaming pass, finish each member folder, rename when verified.

Every member is written under a temporary name beside its final folder and renamed only once its weights are
verified and its config, tokenizer and provenance are in place, so a stopped build never leaves a
member that looks complete. Re-running a stopped build writes only the members that are missing. Recovery
(recover/) runs through its one prepare/apply: the pass step before the pass, the member steps on each written
member before it is renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubprune import manifest
from hubprune._version import __version__
from hubprune.device import DEFAULT_RUNTIME, RuntimeSettings, available_memory
from hubprune.errors import CriterionError, OutputError
from hubprune.fields import nested, setting
from hubprune.manifest import Family
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.provenance import PROVENANCE
from hubprune.pruning.calibrate import GENERATED, CalibrationSettings, LoadSettings, calibrate
from hubprune.pruning.checkpoint import Checkpoint
from hubprune.pruning.importance import (
    CRITERIA,
    DATA_CRITERIA,
    FISHER_CRITERIA,
    GRAM_CRITERIA,
    check_criterion,
    keep,
    rank,
)
from hubprune.pruning.member import (
    add_records,
    calibration_identity,
    finish_member,
    member_record,
    source_record,
)
from hubprune.pruning.plan import FamilyPlan, MemberPlan, Target, plan_family
from hubprune.pruning.prune import (
    MemberOutput,
    MlpLayout,
    analyse,
    data_scores,
    down_modules,
    down_weights,
    model_shape,
    prune_pass,
    weight_layer_scores,
)
from hubprune.pruning.source import source_identity
from hubprune.pruning.writer import DEFAULT_MAX_SHARD_BYTES
from hubprune.recover import methods
from hubprune.recover.apply import Recovery
from hubprune.recover.refit import NewColumns, PassInputs
from hubprune.recover.settings import RecoverySettings

PARTIAL_PREFIX = ".partial-"
# A family's recovery work: the generated data every member learns from, and each member's saved state while it
# trains (a stopped build resumes from it). Removed once every member is in place; never published.
DISTILL_WORK = ".distill"


# What a build does unless told otherwise: activation + refit, the best without training off the calibration's
# domain on both models measured (obs-fisher + refit wins some of SmolLM2's texts, not Gemma's), and cheap (one
# calibration pass, then a ridge solve per layer). Measured on SmolLM2-135M at 20 % removed, ratio to the base's
# token perplexity on news / fiction / the Python FAQ (docs/recovery.md): activation + refit 2.03x / 1.68x / 1.35x;
# the paper's MAW with no recovery 34.3x / 41.7x / 18.3x; MAW + refit 2.69x / 2.46x / 1.93x. The paper's method
# (PAPER_CRITERION, no recovery) is what `--preset paper` asks for.
DEFAULT_CRITERION = "activation"
DEFAULT_RECOVERY = ("refit",)
PAPER_CRITERION = "maw"


@dataclass(frozen=True)
class PruneSettings:
    criterion: str = setting(
        DEFAULT_CRITERION,
        f"Neuron importance: {', '.join(CRITERIA)} (the paper's is {PAPER_CRITERION}: build-family --preset paper).",
    )
    seed: int | None = setting(None, "Seed of the random criterion (default 0).")
    multiple_of: int | None = setting(None, "Round every width to the nearest multiple of N.", minimum=1)
    max_shard_bytes: int = setting(
        DEFAULT_MAX_SHARD_BYTES, "Largest safetensors shard written.", flag="--max-shard-size", parse="size"
    )
    calibration: CalibrationSettings = nested(CalibrationSettings, "calibration")  # read when a step needs it
    recovery: RecoverySettings = nested(lambda: RecoverySettings(DEFAULT_RECOVERY), "recovery")

    def __post_init__(self) -> None:
        criterion = check_criterion(self.criterion)
        object.__setattr__(self, "criterion", criterion)
        object.__setattr__(self, "seed", (self.seed or 0) if criterion == "random" else None)

    def paper_method(self) -> PruneSettings:
        """These settings with the paper's method: PAPER_CRITERION and no recovery (arXiv 2512.22671)."""
        return dataclasses.replace(
            self, criterion=PAPER_CRITERION, recovery=dataclasses.replace(self.recovery, steps=())
        )

    @property
    def reads_text(self) -> bool:
        """Whether the criterion or the recovery reads the calibration text."""
        return self.criterion in DATA_CRITERIA or self.recovery.reads_calibration


def make_plan(checkpoint: Checkpoint, targets: list[Target], multiple_of: int | None) -> tuple[MlpLayout, FamilyPlan]:
    """Check the source and every target; nothing is written."""
    layout = analyse(checkpoint)
    return layout, plan_family(checkpoint.base_name, model_shape(checkpoint, layout), targets, multiple_of=multiple_of)


def build_family(
    checkpoint: Checkpoint,
    out: Path,
    targets: list[Target],
    settings: PruneSettings,
    runtime: RuntimeSettings = DEFAULT_RUNTIME,
    *,
    force: bool = False,
    before_writing: Callable[[FamilyPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Family:
    """Write every planned member that is not already in `out`, and family.json; return the manifest.
    `before_writing(plan)` is called once every check has passed, before calibration and the first byte written
    (the pipeline runs the criteria check there)."""
    out = Path(out)
    check_output(out, checkpoint)
    check_family_folder(out, checkpoint, settings, runtime)  # before planning: a width error would hide the cause
    layout, plan = make_plan(checkpoint, targets, settings.multiple_of)
    _refuse_foreign_folder(out, force)
    todo = [m for m in plan.members if not _already_built(out / m.name, m, settings.criterion)]
    recovery = Recovery(settings.recovery, runtime.device)
    recovery.check_inputs(checkpoint.folder)  # a text too short is refused before calibration runs
    if before_writing is not None:
        before_writing(plan)
    prepared = _prepare(checkpoint, layout, settings, runtime, recovery, todo, on_progress) if todo else None
    if todo:
        _start_recovery(recovery, checkpoint, out / DISTILL_WORK, prepared.windows, on_progress)  # type: ignore[union-attr]
    family = _open_family_folder(out, checkpoint, plan, settings, runtime)
    for stale in out.glob(f"{PARTIAL_PREFIX}*"):  # left by a stopped build
        shutil.rmtree(stale)
    for member in plan.members:
        if member not in todo:  # its record may still say pending: a stop can fall between rename and save
            record = family.member(member.name) or member_record(member)
            family = family.with_member(record.with_stage("prune", status="done"))
        else:
            family = family.with_member(member_record(member).with_stage("prune", status="pending"))
    manifest.save(family, out)
    if todo:
        partials = {m.name: out / f"{PARTIAL_PREFIX}{m.name}" for m in todo}
        _announce(on_progress, checkpoint, out, settings)
        _write_members(checkpoint, layout, plan, todo, partials, settings, prepared, on_progress)  # type: ignore[arg-type]
        try:
            for member in todo:
                state = out / DISTILL_WORK / member.name
                _recover_member(recovery, partials[member.name], layout, state, on_progress)
                (partials[member.name]).rename(out / member.name)
                family = family.with_member(member_record(member).with_stage("prune", status="done"))
                manifest.save(family, out)
                shutil.rmtree(state, ignore_errors=True)  # in place: nothing of this member's left to resume
        finally:  # stopped between renames: the members not yet in place are written again by the next run
            for partial in partials.values():
                shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(out / DISTILL_WORK, ignore_errors=True)  # every member is in place: nothing left to resume
    return family


def prune_one(
    checkpoint: Checkpoint,
    out: Path,
    target: Target,
    settings: PruneSettings,
    runtime: RuntimeSettings = DEFAULT_RUNTIME,
    *,
    on_progress: ProgressCallback | None = None,
) -> MemberPlan:
    """Write one pruned checkpoint to `out`, which must not exist yet."""
    out = Path(out)
    check_output(out, checkpoint)
    layout, plan = make_plan(checkpoint, [target], settings.multiple_of)
    if out.exists():
        raise OutputError(f"output folder {out} already exists: choose a new folder or remove it first")
    member = plan.members[0]
    recovery = Recovery(settings.recovery, runtime.device)
    recovery.check_inputs(checkpoint.folder)  # a text too short is refused before calibration runs
    prepared = _prepare(checkpoint, layout, settings, runtime, recovery, [member], on_progress)
    work = out.with_name(f"{DISTILL_WORK}-{out.name}")  # kept if stopped: the next run resumes from it
    _start_recovery(recovery, checkpoint, work, prepared.windows, on_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{PARTIAL_PREFIX}{out.name}")
    if partial.exists():
        shutil.rmtree(partial)
    _announce(on_progress, checkpoint, out, settings)
    _write_members(checkpoint, layout, plan, [member], {member.name: partial}, settings, prepared, on_progress)
    try:
        _recover_member(recovery, partial, layout, work / "state", on_progress)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return member


def check_output(out: Path, checkpoint: Checkpoint) -> None:
    """Refuse an output folder inside the source's own folder: the source would hold a model of its own."""
    source = checkpoint.folder.resolve()
    where = Path(out).resolve()
    if where == source or source in where.parents:
        raise OutputError(
            f"the output folder {out} is inside the source folder {checkpoint.folder}: choose a folder outside it"
        )


def _start_recovery(
    recovery: Recovery,
    checkpoint: Checkpoint,
    work: Path,
    windows: tuple[torch.Tensor, ...],
    on_progress: ProgressCallback | None,
) -> None:
    """Load what the member steps learn from: the base, the distillation's data, the calibration `windows`."""
    message = f"[{methods.label(tuple(m.name for m in methods.of_phase(recovery.settings.steps, 'member')))}] "
    source = json.dumps(source_identity(checkpoint), sort_keys=True)  # a cache of another base is made again
    recovery.start(checkpoint.folder, work, source, on_progress, message + checkpoint.source, windows)


def _recover_member(
    recovery: Recovery, folder: Path, layout: MlpLayout, state: Path, on_progress: ProgressCallback | None
) -> None:
    """Run the member steps on the member written in `folder`, and record how in its hubprune.json."""
    if recovery.settings.trains:
        name = folder.name.removeprefix(PARTIAL_PREFIX)
        add_records(folder, recovery.recover_folder(folder, layout.roles, state, name, on_progress))


def _announce(on_progress: ProgressCallback | None, checkpoint: Checkpoint, out: Path, settings: PruneSettings) -> None:
    """Say what is about to be written, once every check has passed."""
    message = f"[prune] {checkpoint.source} -> {out} ({settings.criterion}, one streaming pass)"
    report(on_progress, Progress("prune", message))


@dataclass(frozen=True)
class _Prepared:
    """What the pass needs, computed before anything is written: every layer's scores, the calibration they or
    the recovery read, and with a pass step each member width's down_proj updates and their record."""

    scores: dict[int, torch.Tensor]
    calibration: dict[str, Any] | None
    down_updates: dict[int, dict[int, torch.Tensor | NewColumns]] = field(default_factory=dict)  # width -> layer
    recovery: dict[int, dict[str, Any]] = field(default_factory=dict)  # width -> how its refit was chosen
    windows: tuple[torch.Tensor, ...] = ()  # the calibration windows, for a member step that runs the model on them


def _prepare(
    checkpoint: Checkpoint,
    layout: MlpLayout,
    settings: PruneSettings,
    runtime: RuntimeSettings,
    recovery: Recovery,
    members: list[MemberPlan],
    on_progress: ProgressCallback | None,
) -> _Prepared:
    """Score every layer under the criterion, and with a pass step compute each width's down_proj updates; raises
    (CriterionError) for weights or activations that cannot be ranked, such as NaN or inf, before any folder is
    made."""
    data_aware = settings.criterion in DATA_CRITERIA
    grams = settings.recovery.reads_grams or settings.criterion in GRAM_CRITERIA
    if settings.recovery.keeps_windows and runtime.max_memory is not None:
        raise CriterionError(
            f"recovery {settings.recovery.label} runs the whole model in memory, and `max_memory` asks for it not to "
            "be: leave out `max_memory`, or recover with refit"
        )
    # a weight criterion scores before calibration runs, so damaged weights are refused before the slow part
    weight_scores = (
        None if data_aware else weight_layer_scores(checkpoint, layout, settings.criterion, settings.seed or 0)
    )
    if weight_scores is not None and not settings.recovery.reads_calibration:
        return _Prepared(weight_scores, None)
    if runtime.max_memory is None:
        _check_whole_model_fits(checkpoint)
    wanted = " and ".join(
        w
        for w, on in (
            (f"activations for {settings.criterion}", data_aware),
            ("output Fishers (a backward pass a window)", settings.criterion in FISHER_CRITERIA),
            ("Gram matrices", grams),
            ("windows for the sequential refit", settings.recovery.pass_runs_model),
            ("windows for local reconstruction", "reconstruct" in settings.recovery.steps),
        )
        if on
    )
    stats = calibrate(
        checkpoint.folder,
        down_modules(layout),
        settings.calibration,
        grams=grams,
        announce=lambda: report(on_progress, Progress("prune", f"[calibrate] {checkpoint.source}: {wanted}")),
        load=_calibration_load(runtime),
        source=json.dumps(source_identity(checkpoint), sort_keys=True),
        keep_inputs=settings.recovery.keeps_windows,
        fishers=settings.criterion in FISHER_CRITERIA,
        on_progress=on_progress,
    )
    scores = data_scores(checkpoint, layout, stats, settings.criterion) if weight_scores is None else weight_scores
    if not settings.recovery.refits:  # no pass step: the kept columns as they are
        return _Prepared(scores, stats.record, windows=stats.inputs)
    inputs = PassInputs(down_weights(checkpoint, layout), stats.grams, down_modules=down_modules(layout))
    if settings.recovery.pass_runs_model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(checkpoint.folder, dtype=torch.float32).eval()
        inputs = dataclasses.replace(inputs, model=model, windows=stats.inputs)
    updates, records = {}, {}
    for width in [m.intermediate_size for m in members]:
        step = methods.of_phase(settings.recovery.steps, "pass")[0].name
        report(on_progress, Progress("prune", f"[{step}] down_proj of every layer at width {width}"))
        kept = {layer: keep(rank(scores[layer]), width) for layer in scores}
        member_refit = recovery.pass_updates(inputs, kept)
        updates[width], records[width] = member_refit.updates, member_refit.record  # type: ignore[union-attr]
    return _Prepared(scores, stats.record, updates, records, stats.inputs)


def _write_members(
    checkpoint: Checkpoint,
    layout: MlpLayout,
    plan: FamilyPlan,
    members: Iterable[MemberPlan],
    folders: dict[str, Path],
    settings: PruneSettings,
    prepared: _Prepared,
    on_progress: ProgressCallback | None,
) -> None:
    members = list(members)
    try:
        for member in members:
            folders[member.name].mkdir(parents=True)
        kept = prune_pass(
            checkpoint,
            layout,
            [MemberOutput(folders[m.name], m.intermediate_size) for m in members],
            prepared.scores,
            max_shard_bytes=settings.max_shard_bytes,
            on_progress=on_progress,
            down_updates=prepared.down_updates,
        )
        for member in members:
            how = {
                "criterion": settings.criterion,
                "seed": settings.seed,
                "calibration": prepared.calibration,
                "recovery": prepared.recovery.get(member.intermediate_size),
                "multiple_of": settings.multiple_of,
            }
            finish_member(checkpoint, layout, plan, member, folders[member.name], kept[member.intermediate_size], how)
    except BaseException:
        for member in members:
            shutil.rmtree(folders[member.name], ignore_errors=True)
        raise


def _resume_fix(name: str, built: Any) -> str:
    """What to give to ask again for the setting `name` a family was built with."""
    if name == "source":
        return f"give the source {built}"
    return f"leave out `{name}`" if built is None else f"give `{name}` {built}"


def check_family_folder(
    out: Path, checkpoint: Checkpoint, settings: PruneSettings, runtime: RuntimeSettings = DEFAULT_RUNTIME
) -> None:
    """Refuse, before anything is planned or written, a family folder `out` that holds a family of another source
    or other settings: one family is one source, criterion, seed, multiple-of, calibration and recovery."""
    if not (Path(out) / manifest.MANIFEST).exists():
        return
    existing = manifest.load(Path(out))
    wanted = (
        ("source", "source", existing.source.id, checkpoint.source),
        ("revision", "revision", existing.source.revision, checkpoint.revision),
        ("criterion", "criterion", existing.criterion, settings.criterion),
        ("seed", "seed", existing.seed, settings.seed),
        ("multiple-of", "multiple_of", existing.multiple_of, settings.multiple_of),
        ("recovery", "recover", existing.recovery, settings.recovery.label),
    )
    differ = [(label, name, built, asked) for label, name, built, asked in wanted if built != asked]
    if differ:  # every difference in one message: a family built with other defaults differs in several
        fixes = [_resume_fix(name, built) for _, name, built, _ in differ]
        raise OutputError(
            f"{out} holds a family built with {', '.join(f'{label} {_shown(built)}' for label, _, built, _ in differ)}; "
            f"this run asks for {', '.join(f'{label} {_shown(asked)}' for label, _, _, asked in differ)}: "
            f"{' and '.join(fixes)} to resume it, or choose a new folder"
        )
    for done, step, built, asked in (
        ("distilled", "distillation", existing.distill or {}, settings.recovery.distill_identity() or {}),
        (
            "reconstructed",
            "local reconstruction",
            existing.reconstruct or {},
            settings.recovery.reconstruct_identity() or {},
        ),
    ):
        if built != asked:
            differ = sorted(k for k in built.keys() | asked.keys() if built.get(k) != asked.get(k))
            shown = ", ".join(f"{k} {_shown(built.get(k))} (this run: {_shown(asked.get(k))})" for k in differ)
            raise OutputError(
                f"{out} holds a family {done} with {shown}: give the same {step} settings to resume it, or "
                "choose a new folder"
            )
    wanted_calibration = _calibration_identity(settings, runtime)
    if existing.calibration != wanted_calibration:
        was = existing.calibration or {}
        if {**was, "load": None} == {**(wanted_calibration or {}), "load": None}:
            raise OutputError(
                f"{out} holds a family calibrated {'with' if was.get('load') else 'without'} `max_memory` (in the "
                f"{'source dtype' if was.get('load') else 'float32'}); this run asks otherwise: "
                f"{'give' if was.get('load') else 'leave out'} `max_memory` to resume it, or choose a new folder"
            )
        if was.get("source") == GENERATED:
            what = f"generated data ({was.get('max_tokens')} tokens)"
        else:
            what = f"{was.get('source', 'an unrecorded text')} ({was.get('max_tokens', '?')} tokens, sha256 "
            what += f"{str(was.get('sha256'))[:12]})"
        raise OutputError(
            f"{out} holds a family calibrated on {what}; this calibration differs: give the same `calibration` "
            "and `calibration_tokens`, or choose a new folder"
        )


def _shown(value: object) -> str:
    return "none" if value is None else str(value)


def _calibration_identity(settings: PruneSettings, runtime: RuntimeSettings) -> dict[str, Any] | None:
    return calibration_identity(settings.calibration if settings.reads_text else None, runtime.max_memory is not None)


def _refuse_foreign_folder(out: Path, force: bool) -> None:
    """A folder that holds files but no family is someone else's: refused unless `force`."""
    if (out / manifest.MANIFEST).exists() or force or not out.exists():
        return
    if any(not _own_leftover(p) for p in out.iterdir()):
        raise OutputError(f"{out} is not empty and is not a hubprune family: choose a new folder, or pass `force`")


def _open_family_folder(
    out: Path, checkpoint: Checkpoint, plan: FamilyPlan, settings: PruneSettings, runtime: RuntimeSettings
) -> Family:
    """The family already in `out` (check_family_folder has checked its source and settings), or a new one."""
    if (out / manifest.MANIFEST).exists():
        return manifest.load(out)
    out.mkdir(parents=True, exist_ok=True)
    return Family(
        hubprune_version=__version__,
        source=source_record(checkpoint, plan),
        criterion=settings.criterion,
        seed=settings.seed,
        multiple_of=settings.multiple_of,
        members=(),
        calibration=_calibration_identity(settings, runtime),
        recovery=settings.recovery.label,
        distill=settings.recovery.distill_identity(),
        reconstruct=settings.recovery.reconstruct_identity(),
    )


def _own_leftover(path: Path) -> bool:
    """What a build killed before its first family.json was in place leaves: a partial member, the manifest's
    temporary file, or the recovery's work folder (its generated data is made before the manifest). A folder
    holding only these is the build's own, not someone else's that needs `force`."""
    return path.name in (DISTILL_WORK, f".{manifest.MANIFEST}.tmp") or path.name.startswith(PARTIAL_PREFIX)


def _check_whole_model_fits(checkpoint: Checkpoint) -> None:
    """Refuse a calibration whose whole-model float32 load would not fit in the memory available, before it starts:
    the default method calibrates, and a model the paper's weight criterion streamed in a few MiB may not fit."""
    float32_bytes = 4 * sum(math.prod(t.shape) for t in checkpoint.tensors.values())
    available = available_memory()
    if available is not None and float32_bytes > available:
        raise CriterionError(
            f"calibration loads the whole model in float32 on the CPU ({float32_bytes / 1e9:.1f} GB), more than the "
            f"{available / 1e9:.1f} GB this machine has available: give `max_memory` to keep part of it on disk, or "
            "prune by weights alone (`criterion` maw, `recover` none)"
        )


def _calibration_load(runtime: RuntimeSettings) -> LoadSettings:
    """How calibration loads the model: whole, float32, on the CPU (the same statistics on every machine), unless a
    memory cap asks for accelerate's big-model loading, which runs on the runtime's device in the source dtype."""
    if runtime.max_memory is None:
        return LoadSettings()
    return LoadSettings(device=runtime.device, max_memory=runtime.max_memory)


def _already_built(folder: Path, member: MemberPlan, criterion: str) -> bool:
    """True when `folder` holds this member, complete (it was renamed into place only after verification)."""
    provenance = folder / PROVENANCE
    if not folder.exists():
        return False
    if not provenance.exists():
        raise OutputError(f"{folder} exists but is not a hubprune member: move it away, or choose a new family folder")
    built = json.loads(provenance.read_text(encoding="utf-8"))
    if built["intermediate_size"]["pruned"] != member.intermediate_size or built["criterion"] != criterion:
        raise OutputError(
            f"{folder} holds a member of width {built['intermediate_size']['pruned']} ({built['criterion']}), not "
            f"{member.intermediate_size}: remove it, or choose a new family folder"
        )
    return True
