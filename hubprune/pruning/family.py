"""Build members from a source: plan, one streaming pass, finish each member folder, rename when verified.

Every member is written under a temporary name beside its final folder and renamed only once its weights are
verified and its config, tokenizer and provenance are in place, so a stopped build never leaves a
member that looks complete. Re-running a stopped build writes only the members that are missing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hubprune import manifest
from hubprune._version import __version__
from hubprune.errors import LaunchError, OutputError
from hubprune.files import write_json_atomic
from hubprune.manifest import Family, MemberRecord, SourceRecord
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.pruning.calibrate import CalibrationSettings, LoadSettings, calibrate, calibration_text
from hubprune.pruning.checkpoint import Checkpoint
from hubprune.pruning.importance import DATA_CRITERIA, check_criterion, keep, rank
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
from hubprune.recover.distill import DistillSettings, Teacher, distill_member, load_teacher
from hubprune.recover.distill_data import check_text
from hubprune.recover.launch import distill_launched, parse_launcher
from hubprune.recover.refit import check_recovery, distills, refit_member, refits

PROVENANCE = "hubprune.json"
KEPT_INDICES = "hubprune-kept-indices.json"
PARTIAL_PREFIX = ".partial-"
# A family's distillation work: the generated data every member learns from, and each member's saved state while
# it trains (a stopped build resumes from it). Removed once every member is in place; never published.
DISTILL_WORK = ".distill"
DISTILL_DATA = "data.safetensors"
TIE_RULE = "descending float32 score; equal scores keep the lower neuron index first; kept indices ascending"


@dataclass(frozen=True)
class PruneSettings:
    criterion: str = "maw"
    seed: int | None = None  # only the random criterion uses it
    multiple_of: int | None = None
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    calibration: CalibrationSettings | None = None  # the data-aware criteria's and recovery's text (None: default)
    recover: str = "none"  # none | refit | distill | refit+distill (RECOVERY_CHOICES)
    distill: DistillSettings | None = None  # with distill: the budget and data (None: the defaults)
    device: str = "cpu"  # where calibration and distillation run (the prune pass itself always streams on the CPU)
    max_memory: int | None = None  # bytes of weights calibration keeps resident (calibrate.LoadSettings); None: all
    distill_launcher: str | None = None  # distil in the processes this command starts (distill_launch.py); None: here


def make_plan(checkpoint: Checkpoint, targets: list[Target], multiple_of: int | None) -> tuple[MlpLayout, FamilyPlan]:
    """Check the source and every target; nothing is written."""
    layout = analyse(checkpoint)
    return layout, plan_family(checkpoint.base_name, model_shape(checkpoint, layout), targets, multiple_of=multiple_of)


def build_family(
    checkpoint: Checkpoint,
    out: Path,
    targets: list[Target],
    settings: PruneSettings,
    *,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Family:
    """Write every planned member that is not already in `out`, and family.json; return the manifest."""
    settings = _normalized(settings)
    out = Path(out)
    check_family_folder(out, checkpoint, settings)  # before planning: a width error would hide the real cause
    layout, plan = make_plan(checkpoint, targets, settings.multiple_of)
    _refuse_foreign_folder(out, force)
    todo = [m for m in plan.members if not _already_built(out / m.name, m, settings.criterion)]
    widths = [m.intermediate_size for m in todo]
    if settings.distill is not None:
        check_text(checkpoint.folder, settings.distill)  # a text too short is refused before calibration runs
    prepared = _prepare(checkpoint, layout, settings, widths, on_progress) if todo else None  # may refuse the source
    distilling = settings.distill is not None and todo
    teacher = _teacher(checkpoint, out / DISTILL_WORK, settings, on_progress) if distilling else None
    family = _open_family_folder(out, checkpoint, plan, settings)
    for stale in out.glob(f"{PARTIAL_PREFIX}*"):  # left by a stopped build
        shutil.rmtree(stale)
    for member in plan.members:
        if member not in todo:  # its record may still say pending: a stop can fall between rename and save
            record = family.member(member.name) or _record(member)
            family = family.with_member(record.with_stage("prune", status="done"))
        else:
            family = family.with_member(_record(member).with_stage("prune", status="pending"))
    manifest.save(family, out)
    if todo:
        partials = {m.name: out / f"{PARTIAL_PREFIX}{m.name}" for m in todo}
        _announce(on_progress, checkpoint, out, settings)
        _write_members(checkpoint, layout, plan, todo, partials, settings, prepared, on_progress)  # type: ignore[arg-type]
        try:
            for member in todo:
                state = out / DISTILL_WORK / member.name
                if teacher is not None:
                    _distil(partials[member.name], teacher, layout, settings, state, on_progress)
                (partials[member.name]).rename(out / member.name)
                family = family.with_member(_record(member).with_stage("prune", status="done"))
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
    *,
    on_progress: ProgressCallback | None = None,
) -> MemberPlan:
    """Write one pruned checkpoint to `out`, which must not exist yet."""
    settings = _normalized(settings)
    layout, plan = make_plan(checkpoint, [target], settings.multiple_of)
    out = Path(out)
    if out.exists():
        raise OutputError(f"output folder {out} already exists: choose a new folder or remove it first")
    if settings.distill is not None:
        check_text(checkpoint.folder, settings.distill)  # a text too short is refused before calibration runs
    prepared = _prepare(checkpoint, layout, settings, [plan.members[0].intermediate_size], on_progress)
    work = out.with_name(f"{DISTILL_WORK}-{out.name}")  # kept if stopped: the next run resumes from it
    teacher = _teacher(checkpoint, work, settings, on_progress) if settings.distill is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{PARTIAL_PREFIX}{out.name}")
    if partial.exists():
        shutil.rmtree(partial)
    member = plan.members[0]
    _announce(on_progress, checkpoint, out, settings)
    _write_members(checkpoint, layout, plan, [member], {member.name: partial}, settings, prepared, on_progress)
    if teacher is not None:
        try:
            _distil(partial, teacher, layout, settings, work / "state", on_progress)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    partial.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return member


def _teacher(
    checkpoint: Checkpoint, work: Path, settings: PruneSettings, on_progress: ProgressCallback | None
) -> Teacher:
    message = f"[distill] {checkpoint.source}: loading the base model and its distillation data"
    return load_teacher(
        checkpoint.folder,
        settings.distill,  # type: ignore[arg-type]
        cache=work / DISTILL_DATA,
        source=json.dumps(source_identity(checkpoint), sort_keys=True),  # a cache of another base is made again
        device=settings.device,
        keep_model=settings.distill_launcher is None,  # launched processes load their own
        announce=lambda: report(on_progress, Progress("distill", message)),
        on_progress=on_progress,
    )


def _distil(
    folder: Path,
    teacher: Teacher,
    layout: MlpLayout,
    settings: PruneSettings,
    state: Path,
    on_progress: ProgressCallback | None,
) -> None:
    """Distil the member written in `folder` from the base, and record how in its hubprune.json. A state saved in
    `state` by a stopped run resumes only for the same member: same source, kept neurons and refit."""
    distill = settings.distill
    assert distill is not None
    name = folder.name.removeprefix(PARTIAL_PREFIX)
    report(on_progress, Progress("distill", f"[distill] {name}: {distill.planned_steps} steps"))
    provenance = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    refit = provenance["recovery"] or {}
    member = json.dumps(
        [provenance["source"], provenance["kept_indices"]["sha256"], refit.get("alpha")], sort_keys=True
    )
    where = {"state": state, "member": member, "device": settings.device, "item": name, "on_progress": on_progress}
    if settings.distill_launcher is None:
        record = distill_member(folder, teacher, distill, layout.roles, **where)
    else:
        launcher = parse_launcher(settings.distill_launcher)
        record = distill_launched(folder, teacher, distill, layout.roles, launcher=launcher, **where)
    write_json_atomic(folder / PROVENANCE, {**provenance, "distillation": record})


def _announce(on_progress: ProgressCallback | None, checkpoint: Checkpoint, out: Path, settings: PruneSettings) -> None:
    """Say what is about to be written, once every check has passed."""
    message = f"[prune] {checkpoint.source} -> {out} ({settings.criterion}, one streaming pass)"
    report(on_progress, Progress("prune", message))


def _normalized(settings: PruneSettings) -> PruneSettings:
    criterion = check_criterion(settings.criterion)
    seed = (settings.seed or 0) if criterion == "random" else None
    recover = check_recovery(settings.recover)
    reads_text = criterion in DATA_CRITERIA or refits(recover)
    calibration = (settings.calibration or CalibrationSettings()) if reads_text else None
    distill = (settings.distill or DistillSettings()) if distills(recover) else None
    if settings.distill_launcher is not None:
        if distill is None:
            raise LaunchError(
                f"`distill_launcher` is given, but `recover` {recover} does not distil: recover with distill or "
                "refit+distill, or leave the launcher out"
            )
        parse_launcher(settings.distill_launcher)  # refused before anything is read or written
    return replace(settings, criterion=criterion, seed=seed, calibration=calibration, recover=recover, distill=distill)


@dataclass(frozen=True)
class _Prepared:
    """What the pass needs, computed before anything is written: every layer's scores, the calibration they or
    the recovery read, and with recovery each member width's down_proj updates and their record."""

    scores: dict[int, torch.Tensor]
    calibration: dict[str, Any] | None
    down_updates: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)  # width -> layer -> M
    recovery: dict[int, dict[str, Any]] = field(default_factory=dict)  # width -> how its refit was chosen


def _prepare(
    checkpoint: Checkpoint,
    layout: MlpLayout,
    settings: PruneSettings,
    widths: list[int],
    on_progress: ProgressCallback | None,
) -> _Prepared:
    """Score every layer under the criterion, and with recovery refit each width's down_proj; raises
    (CriterionError) for weights or activations that cannot be ranked, such as NaN or inf, before any folder is
    made."""
    data_aware, refit = settings.criterion in DATA_CRITERIA, refits(settings.recover)
    if not data_aware and not refit:
        return _Prepared(weight_layer_scores(checkpoint, layout, settings.criterion, settings.seed or 0), None)
    wanted = " and ".join(
        w
        for w, on in ((f"activations for {settings.criterion}", data_aware), ("Gram matrices for the refit", refit))
        if on
    )
    stats = calibrate(
        checkpoint.folder,
        down_modules(layout),
        settings.calibration,  # type: ignore[arg-type]
        grams=refit,
        announce=lambda: report(on_progress, Progress("prune", f"[calibrate] {checkpoint.source}: {wanted}")),
        load=_calibration_load(settings),
    )
    if data_aware:
        scores = data_scores(checkpoint, layout, stats, settings.criterion)
    else:
        scores = weight_layer_scores(checkpoint, layout, settings.criterion, settings.seed or 0)
    if not refit:
        return _Prepared(scores, stats.record)
    downs = down_weights(checkpoint, layout)
    updates, records = {}, {}
    for width in widths:
        report(on_progress, Progress("prune", f"[refit] down_proj of every layer at width {width}"))
        kept = {layer: keep(rank(scores[layer]), width) for layer in scores}
        member_refit = refit_member(downs, stats.grams, kept)  # type: ignore[arg-type]
        updates[width], records[width] = member_refit.updates, member_refit.record
    return _Prepared(scores, stats.record, updates, records)


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
            _finish_member(
                checkpoint,
                layout,
                plan,
                member,
                folders[member.name],
                kept[member.intermediate_size],
                settings,
                prepared.calibration,
                prepared.recovery.get(member.intermediate_size),
            )
    except BaseException:
        for member in members:
            shutil.rmtree(folders[member.name], ignore_errors=True)
        raise


def _finish_member(
    checkpoint: Checkpoint,
    layout: MlpLayout,
    plan: FamilyPlan,
    member: MemberPlan,
    folder: Path,
    kept: torch.Tensor,
    settings: PruneSettings,
    calibration: dict[str, Any] | None,
    recovery: dict[str, Any] | None,
) -> None:
    config = copy.deepcopy(checkpoint.config)
    text = layout.spec.text_config(config)
    width = member.intermediate_size
    text["intermediate_size"] = (
        [width] * len(text["intermediate_size"]) if isinstance(text["intermediate_size"], list) else width
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in checkpoint.copied_files:
        shutil.copy2(checkpoint.folder / name, folder / name)
    kept_json = json.dumps({"layers": kept.tolist()}, separators=(",", ":")) + "\n"
    (folder / KEPT_INDICES).write_text(kept_json, encoding="utf-8")
    provenance = {
        "hubprune_version": __version__,
        "source": {
            **source_identity(checkpoint),  # never its local path: this file is published with the member
            "revision": checkpoint.revision,
            "model_type": checkpoint.config.get("model_type"),
            "origin": checkpoint.origin,
        },
        "criterion": settings.criterion,
        "seed": settings.seed,
        "calibration": calibration,  # the text a data-aware criterion or the recovery read, else None
        "recovery": recovery,  # how down_proj was refit (recovery.refit_member), else None: the kept columns as they were
        "distillation": None,  # how the member was distilled (distill.train), written once it was, else None
        "target": {"kind": member.target.kind, "value": member.target.value},
        "multiple_of": settings.multiple_of,
        "hidden_size": plan.shape.hidden_size,
        "intermediate_size": {"base": plan.shape.intermediate_size, "pruned": width},
        "expansion_ratio": {"base": plan.shape.intermediate_size / plan.shape.hidden_size, "pruned": member.ratio},
        "params": {
            "base": {"total": plan.shape.params_total, "mlp": plan.shape.params_mlp},
            "pruned": {"total": member.params_total, "mlp": member.params_mlp},
        },
        "ranking": TIE_RULE,
        "kept_indices": {
            "file": KEPT_INDICES,
            "sha256": hashlib.sha256(kept_json.encode()).hexdigest(),
            "num_layers": len(kept),
        },
    }
    (folder / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def _record(member: MemberPlan) -> MemberRecord:
    return MemberRecord(
        name=member.name,
        path=member.name,
        target={"kind": member.target.kind, "value": member.target.value},
        ratio=member.ratio,
        intermediate_size=member.intermediate_size,
        params_total=member.params_total,
        params_mlp=member.params_mlp,
        weight_bytes=member.weight_bytes,
    )


def _source_record(checkpoint: Checkpoint, plan: FamilyPlan) -> SourceRecord:
    return SourceRecord.of(
        plan.shape,
        id=checkpoint.source,
        revision=checkpoint.revision,
        model_type=str(checkpoint.config.get("model_type")),
        origin=checkpoint.origin,
        folder=str(checkpoint.folder.resolve()),
    )


def check_family_folder(out: Path, checkpoint: Checkpoint, settings: PruneSettings) -> None:
    """Refuse, before anything is planned or written, a family folder `out` that holds a family of another source
    or other settings: one family is one source, criterion, seed, multiple-of and calibration."""
    if not (Path(out) / manifest.MANIFEST).exists():
        return
    settings = _normalized(settings)
    existing = manifest.load(Path(out))
    wanted = (
        ("source", "source", existing.source.id, checkpoint.source),
        ("revision", "revision", existing.source.revision, checkpoint.revision),
        ("criterion", "criterion", existing.criterion, settings.criterion),
        ("seed", "seed", existing.seed, settings.seed),
        ("multiple-of", "multiple_of", existing.multiple_of, settings.multiple_of),
        ("recovery", "recover", existing.recovery, settings.recover),
    )
    for label, name, built, asked in wanted:
        if built != asked:
            if name == "source":
                fix = f"give the source {built}"
            elif built is None:
                fix = f"leave out `{name}`"
            else:
                fix = f"give `{name}` {built}"
            raise OutputError(
                f"{out} holds a family built with {label} {_shown(built)}; this run asks for {label} {_shown(asked)}: "
                f"{fix} to resume it, or choose a new folder"
            )
    built, asked = existing.distill or {}, _distill_identity(settings.distill) or {}
    if built != asked:
        differ = sorted(k for k in built.keys() | asked.keys() if built.get(k) != asked.get(k))
        shown = ", ".join(f"{k} {_shown(built.get(k))} (this run: {_shown(asked.get(k))})" for k in differ)
        raise OutputError(
            f"{out} holds a family distilled with {shown}: give the same distillation settings to resume it, or "
            "choose a new folder"
        )
    wanted_calibration = _calibration_identity(settings.calibration, settings.max_memory)
    if existing.calibration != wanted_calibration:
        was = existing.calibration or {}
        if {**was, "load": None} == {**(wanted_calibration or {}), "load": None}:
            raise OutputError(
                f"{out} holds a family calibrated {'with' if was.get('load') else 'without'} `max_memory` (in the "
                f"{'source dtype' if was.get('load') else 'float32'}); this run asks otherwise: "
                f"{'give' if was.get('load') else 'leave out'} `max_memory` to resume it, or choose a new folder"
            )
        raise OutputError(
            f"{out} holds a family calibrated on {was.get('source', 'an unrecorded text')} "
            f"({was.get('max_tokens', '?')} tokens, sha256 {str(was.get('sha256'))[:12]}); this calibration "
            "differs: give the same `calibration` and `calibration_tokens`, or choose a new folder"
        )


def _shown(value: object) -> str:
    return "none" if value is None else str(value)


def _refuse_foreign_folder(out: Path, force: bool) -> None:
    """A folder that holds files but no family is someone else's: refused unless `force`."""
    if (out / manifest.MANIFEST).exists() or force or not out.exists():
        return
    if any(not _own_leftover(p) for p in out.iterdir()):
        raise OutputError(f"{out} is not empty and is not a hubprune family: choose a new folder, or pass `force`")


def _open_family_folder(out: Path, checkpoint: Checkpoint, plan: FamilyPlan, settings: PruneSettings) -> Family:
    """The family already in `out` (check_family_folder has checked its source and settings), or a new one."""
    if (out / manifest.MANIFEST).exists():
        return manifest.load(out)
    out.mkdir(parents=True, exist_ok=True)
    return Family(
        hubprune_version=__version__,
        source=_source_record(checkpoint, plan),
        criterion=settings.criterion,
        seed=settings.seed,
        multiple_of=settings.multiple_of,
        members=(),
        calibration=_calibration_identity(settings.calibration, settings.max_memory),
        recovery=settings.recover,
        distill=_distill_identity(settings.distill),
    )


def _distill_identity(distill: DistillSettings | None) -> dict[str, Any] | None:
    return None if distill is None else distill.identity()


def _own_leftover(path: Path) -> bool:
    """What a build killed before its first family.json was in place leaves: a partial member, the manifest's
    temporary file, or the distillation's work folder (its generated data is made before the manifest). A folder
    holding only these is the build's own, not someone else's that needs `force`."""
    return path.name in (DISTILL_WORK, f".{manifest.MANIFEST}.tmp") or path.name.startswith(PARTIAL_PREFIX)


def _calibration_load(settings: PruneSettings) -> LoadSettings:
    """How calibration loads the model: whole, float32, on the CPU (the same statistics on every machine), unless a
    memory cap asks for accelerate's big-model loading, which runs on `device` in the source dtype."""
    if settings.max_memory is None:
        return LoadSettings()
    return LoadSettings(device=settings.device, max_memory=settings.max_memory)


def _calibration_identity(calibration: CalibrationSettings | None, max_memory: int | None) -> dict[str, Any] | None:
    """What makes a data-aware family's calibration: the text (by name and sha256), how much of it was read, and
    with a memory cap how the model was loaded (in the source dtype, not float32: the statistics differ slightly,
    so one family is calibrated one way). None for the weight criteria, which read no text."""
    if calibration is None:
        return None
    text, source = calibration_text(calibration)
    identity = {
        "source": source,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "max_tokens": calibration.max_tokens,
        "window": calibration.window,
    }
    return identity if max_memory is None else {**identity, "load": "source dtype, big-model loading"}


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
