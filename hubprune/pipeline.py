"""The whole `build-family` job in one call: prune -> check-criteria -> eval -> profile -> cards.

Each stage is a library function of its own (build_family, check_criteria, evaluate, profile_path,
render_cards) that reads and writes family.json, so any of them can run alone; run_family chains them in the
order a user wants for a new family, checks every stage's settings before the first byte is written, and
returns what each stage found. The command line only parses its options, calls this and prints the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hubprune import manifest
from hubprune.device import DEFAULT_RUNTIME, RuntimeSettings, on_runtime
from hubprune.errors import CriterionError
from hubprune.export.gguf import parse_types
from hubprune.export.members import MemberFiles, check_gguf_source, export_gguf, source_gguf_of
from hubprune.measure.efficiency import ProfileSettings, resolved
from hubprune.measure.evaluate import EvalOutcome, EvalSettings, evaluate, plan_tasks
from hubprune.measure.offline_tasks import evaluated_documents
from hubprune.measure.profile import ModelProfile, profile_path
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.pruning.calibrate import GENERATED, CalibrationSettings, calibration_text
from hubprune.pruning.check import CheckOutcome, CheckSettings, check_criteria
from hubprune.pruning.checkpoint import Checkpoint
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.gguf import is_embedded_default
from hubprune.pruning.plan import FamilyPlan, Target
from hubprune.pruning.source import open_source
from hubprune.publish.cards import CardOutcome, CardSettings, render_cards
from hubprune.publish.licence import known_licence
from hubprune.texts import shared_ngrams

DEFAULT_PRUNE, DEFAULT_EVAL, DEFAULT_PROFILE, DEFAULT_CARDS = (
    PruneSettings(),
    EvalSettings(),
    ProfileSettings(),
    CardSettings(),
)


@dataclass(frozen=True)
class FamilyOutcome:
    """What run_family built and measured; a stage that was not run is None."""

    family_dir: Path
    plan: FamilyPlan  # the base's shape and every member's width, parameters and size
    family: manifest.Family  # family.json as the last stage left it
    check: CheckOutcome | None
    evaluation: EvalOutcome | None
    profiles: tuple[ModelProfile, ...] | None
    cards: CardOutcome
    gguf: list[MemberFiles]  # the GGUF files of every member ([] when none was asked for)


def run_family(
    source: str | None,
    output: Path,
    targets: Sequence[Target],
    prune: PruneSettings = DEFAULT_PRUNE,
    *,
    runtime: RuntimeSettings = DEFAULT_RUNTIME,
    evaluation: EvalSettings | None = DEFAULT_EVAL,
    profile: ProfileSettings | None = DEFAULT_PROFILE,
    cards: CardSettings = DEFAULT_CARDS,
    check_first: bool = False,
    gguf_types: Sequence[str] = (),
    revision: str | None = None,
    force: bool = False,
    command: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> FamilyOutcome:
    """Build the family of `source` (a checkpoint folder, a .gguf file, a Hub repo id, or None for the embedded
    default) at every target width into `output`, then benchmark (unless `evaluation` is None), profile (unless
    `profile` is None) and render the cards; calibration, distillation, eval and profile run on `runtime`.

    `gguf_types` (e.g. ("Q8_0",)) writes every member also as GGUF files of those types, before the benchmarks.
    `check_first` compares the criterion with random pruning at every width once the build's own checks have
    passed and before anything is written, and the table goes into the cards. `command` is the command line
    recorded in family.json for the cards' reproducibility section. A stopped run, run again, finishes what is
    missing only. Each stage checks its own settings; only the measuring stages' are looked at here first, since
    they run after the build has written the members.
    """
    output = Path(output)
    if check_first and prune.criterion == "random":
        raise CriterionError("`check_first` compares the criterion with random pruning: choose another `criterion`")
    if profile is not None:  # a GPU or energy counter this machine lacks stops the job before anything is written
        resolved(on_runtime(profile, runtime))
    checkpoint = open_source(source, revision=revision)
    if gguf_types:  # a type, architecture or tokenizer that GGUF cannot hold faithfully is refused before pruning
        gguf_types = parse_types(gguf_types)
        check_gguf_source(checkpoint)
    if evaluation is not None:  # bad settings, unknown tasks or missing task data stop the job before it writes
        evaluation = _planned_evaluation(evaluation, runtime, checkpoint, prune, on_progress)
    check: list[CheckOutcome] = []
    plans: list[FamilyPlan] = []

    def before_writing(plan: FamilyPlan) -> None:  # build_family calls it once its checks have passed
        plans.append(plan)
        if not check_first:
            return
        comparison = CheckSettings(
            targets=tuple(targets),
            criteria=(prune.criterion, "random"),
            calibration=prune.calibration,
            recovery=prune.recovery,
        )
        check.append(check_criteria(checkpoint, comparison, runtime, on_progress=on_progress))
        for warning in check[0].warnings():
            report(on_progress, Progress("check", warning, status="warning"))

    build_family(
        checkpoint,
        output,
        list(targets),
        prune,
        runtime,
        force=force,
        before_writing=before_writing,
        on_progress=on_progress,
    )
    if check:
        manifest.record_analysis(output, criteria_check=check[0].to_dict())
    if command is not None:
        manifest.record_command(output, "build-family", command)
    gguf = _export_gguf(output, checkpoint, gguf_types, cards.license, on_progress) if gguf_types else []
    evaluated = evaluate(output, evaluation, runtime, on_progress=on_progress) if evaluation is not None else None
    profiles = profile_path(output, profile, runtime, on_progress=on_progress) if profile is not None else None
    rendered = render_cards(output, cards)
    outcome = check[0] if check else None
    return FamilyOutcome(output, plans[0], manifest.load(output), outcome, evaluated, profiles, rendered, gguf)


def _planned_evaluation(
    evaluation: EvalSettings,
    runtime: RuntimeSettings,
    checkpoint: Checkpoint,
    prune: PruneSettings,
    on_progress: ProgressCallback | None,
) -> EvalSettings:
    """The eval settings on `runtime` with `auto` decided, once, and said in one line; a dtype eval refuses
    (float16), unknown tasks or missing task data are refused here, before anything is written."""
    evaluation = on_runtime(evaluation, runtime)
    planned = plan_tasks(evaluation, embedded_default=is_embedded_default(checkpoint.origin))
    if planned.choice is not None:
        report(on_progress, Progress("eval", planned.announcement()))
        evaluation = replace(evaluation, suite=planned.choice.name)
    if prune.reads_text:  # the data-aware criteria and the refit are fitted to the calibration text
        tasks = [(t.task, t.limit) for t in planned.tasks]
        _warn_if_calibration_is_evaluated(prune.calibration, tasks, on_progress)
    return evaluation


def _export_gguf(
    output: Path,
    checkpoint: Checkpoint,
    types: Sequence[str],
    licence: str | None,
    on_progress: ProgressCallback | None,
) -> list[MemberFiles]:
    """Every member as GGUF files of `types`, named with the base's licence as the cards find it."""
    licence = known_licence(output, licence)
    source = source_gguf_of(checkpoint)
    return export_gguf(output, types, source=source, licence=licence, on_progress=on_progress)


def _warn_if_calibration_is_evaluated(
    calibration: CalibrationSettings, tasks: list[tuple[str, int | None]], on_progress: ProgressCallback | None
) -> None:
    """Calibration text that the benchmarks also score flatters the data-aware criteria: say so. Only the offline
    suite's texts are on this machine to compare with; Hub tasks are not checked."""
    if calibration.text == GENERATED:  # not sampled yet: each member's hubprune.json and card give its overlap
        return
    documents = evaluated_documents(tasks)
    shared = shared_ngrams(calibration_text(calibration)[0], documents) if documents else 0
    if shared:
        message = (
            f"the calibration text shares 13-word sequences with {shared} of the {len(documents)} offline "
            "benchmark documents: those scores flatter the criterion; calibrate on a disjoint text"
        )
        report(on_progress, Progress("eval", message, status="warning"))
