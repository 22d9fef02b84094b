"""`hubprune check-criteria`: does a criterion beat random pruning on this model?

For each width and criterion: perplexity on a held-out text of the model pruned that way, every layer at
once, with random pruning as the median (and range) over several seeds. Each pruned model is the base with
the removed neurons' down_proj columns zeroed, which computes exactly what the pruned checkpoint computes
(the oracle of the tests), so one loaded model serves every configuration and nothing is written.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hubprune.device import DEFAULT_RUNTIME, RuntimeSettings
from hubprune.errors import CriterionError
from hubprune.fields import nested, setting
from hubprune.model_inputs import first_predicted, loaded_modules, special_prefix, token_ids, windows
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.pruning.calibrate import ActivationStats, CalibrationSettings, collect_activations
from hubprune.pruning.checkpoint import Checkpoint
from hubprune.pruning.importance import (
    DATA_CRITERIA,
    FISHER_CRITERIA,
    GRAM_CRITERIA,
    check_criterion,
    keep,
    random_scores,
    rank,
)
from hubprune.pruning.plan import Target, plan_family
from hubprune.pruning.prune import (
    COLUMN_ROLES,
    FUSED_ROLES,
    ROW_ROLES,
    MlpLayout,
    analyse,
    data_scores,
    down_modules,
    model_shape,
    weight_scores,
)
from hubprune.pruning.source import source_identity
from hubprune.recover import methods
from hubprune.recover.apply import Recovery
from hubprune.recover.distill import mlp_parameters
from hubprune.recover.refit import NewColumns, PassInputs, apply_update, removed_of
from hubprune.recover.settings import RecoverySettings
from hubprune.texts import SHIPPED_CALIBRATION_START, SHIPPED_TEXT, paragraphs, read_text, shared_ngrams

MIN_HELD_OUT_TOKENS = 64  # fewer scores no model: a perplexity on them is noise, not a measurement


@dataclass(frozen=True)
class CheckSettings:
    text: Path | None = setting(
        None, "Held-out text (default: part of the text hubprune ships).", parse="held-out-file"
    )  # None: the first paragraphs of the shipped text
    pcts: tuple[str, ...] = setting(("10", "20"), "MLP width percentages to remove.", parse="list")
    targets: tuple[Target, ...] = ()  # widths as build-family takes them; when given, they replace pcts
    criteria: tuple[str, ...] = setting(("maw", "activation", "random"), "Criteria to compare.", parse="list")
    seeds: int = setting(3, "Seeds of random pruning (0..N-1).", minimum=1)
    max_tokens: int = setting(
        8192, f"Held-out tokens read (at least {MIN_HELD_OUT_TOKENS}).", flag="--tokens", minimum=MIN_HELD_OUT_TOKENS
    )
    window: int = 512
    calibration: CalibrationSettings = nested(CalibrationSettings, "calibration")
    recovery: RecoverySettings = nested(
        RecoverySettings, "recovery"
    )  # each criterion but random is measured with and without

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(check_criterion(c) for c in self.criteria))  # a typo stops here
        if self.max_tokens < MIN_HELD_OUT_TOKENS:
            raise CriterionError(
                f"check-criteria reads at least {MIN_HELD_OUT_TOKENS} held-out tokens, not {self.max_tokens}: raise "
                "`tokens`"
            )


@dataclass(frozen=True)
class CheckRow:
    criterion: str
    pct: str
    width: int
    perplexity: float  # for random: the median over the seeds
    low: float | None = None  # for random: the range over the seeds
    high: float | None = None
    worse_than_random: bool | None = None  # None for random itself, or when random was not measured
    recovery: str = "none"  # the same pruning, then this recovery (refit, distill, refit+distill)


@dataclass(frozen=True)
class CheckOutcome:
    base_perplexity: float
    rows: tuple[CheckRow, ...]
    text: dict[str, Any]  # the held-out text: source, tokens
    calibration: dict[str, Any] | None  # the calibration record, when a data-aware criterion was checked
    shared_documents: int | None  # held-out paragraphs sharing a 13-word sequence with the calibration text

    def warnings(self) -> list[str]:
        found = [
            f"{r.criterion}{'' if r.recovery == 'none' else ' + ' + r.recovery} at {r.pct} % removed: perplexity "
            f"{r.perplexity:.4g} is worse than random pruning's median {self._random(r.pct):.4g}; prefer a "
            "criterion that beats random on this model"
            for r in self.rows
            if r.worse_than_random
        ]
        if self.shared_documents:
            found.append(
                f"the calibration text shares 13-word sequences with {self.shared_documents} paragraphs of the "
                "held-out text: the data-aware criteria were partly scored on what they were calibrated on; give "
                "disjoint texts"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        """For family.json: every row and the texts read."""
        return {
            "base_perplexity": self.base_perplexity,
            "rows": [asdict(r) for r in self.rows],
            "text": self.text,
            "calibration": self.calibration,
            "shared_documents": self.shared_documents,
            "warnings": self.warnings(),
        }

    def _random(self, pct: str) -> float:
        return next(r.perplexity for r in self.rows if r.criterion == "random" and r.pct == pct)


def held_out_text(settings: CheckSettings) -> tuple[str, str]:
    if settings.text is None:
        return "\n\n".join(paragraphs()[:SHIPPED_CALIBRATION_START]), (
            f"{SHIPPED_TEXT}, paragraphs 1-{SHIPPED_CALIBRATION_START}"
        )
    return read_text(settings.text, "held-out text"), Path(settings.text).name  # the name only: it is published


def check_criteria(
    checkpoint: Checkpoint,
    settings: CheckSettings,
    runtime: RuntimeSettings = DEFAULT_RUNTIME,
    *,
    on_progress: ProgressCallback | None = None,
) -> CheckOutcome:
    """Perplexity of the model pruned by each criterion at each width, against random pruning."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    criteria = list(settings.criteria)
    recovery = Recovery(settings.recovery, runtime.device)
    layout = analyse(checkpoint)
    targets = list(settings.targets) or [Target("pct", p) for p in settings.pcts]
    widths = ", ".join(t.describe() for t in targets)
    plan = plan_family(checkpoint.base_name, model_shape(checkpoint, layout), targets)
    text, source = held_out_text(settings)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.folder)
    ids = token_ids(tokenizer, text, settings.max_tokens)
    if ids.numel() < MIN_HELD_OUT_TOKENS:  # refused with the tokenizer alone, before the model loads
        raise CriterionError(
            f"the held-out text {source} gives {ids.numel()} tokens; check-criteria needs at least "
            f"{MIN_HELD_OUT_TOKENS}: give a longer text"
        )
    report(on_progress, Progress("check", f"[check] {checkpoint.source}: {', '.join(criteria)} at {widths}"))
    model = AutoModelForCausalLM.from_pretrained(checkpoint.folder, dtype=torch.float32).eval()
    prefix = special_prefix(tokenizer)
    names = down_modules(layout)
    downs = loaded_modules(model, names)
    refit = settings.recovery.refits
    stats, shared = None, None
    if settings.recovery.reads_calibration or any(c in DATA_CRITERIA for c in criteria):
        stats, shared = _calibrate(model, tokenizer, checkpoint, names, settings, text, on_progress)
    scores = {c: _scores(checkpoint, layout, c, stats) for c in criteria if c != "random"}
    seeds = range(settings.seeds) if "random" in criteria else range(0)
    scores.update({f"random:{s}": _random(layout.num_layers, layout.intermediate_size, s) for s in seeds})
    base = _perplexity(model, ids, settings.window, prefix)
    recovery.start_in_memory(model, tokenizer, on_progress, stats.inputs if stats else ())
    rows: list[CheckRow] = []
    for member in plan.members:
        removed = (1 - member.intermediate_size / layout.intermediate_size) * 100
        pct = member.target.value if member.target.kind == "pct" else f"{removed:.3g}"
        width = member.intermediate_size
        measured = {
            name: _pruned_perplexity(model, downs, _kept(s, width), None, ids, settings.window, prefix)
            for name, s in scores.items()
        }
        randoms = [v for name, v in measured.items() if name.startswith("random:")]
        median = statistics.median(randoms) if randoms else None
        for criterion in criteria:
            if criterion == "random":
                rows.append(CheckRow("random", pct, width, median, min(randoms), max(randoms)))  # type: ignore[arg-type]
                continue
            recoveries = {"none": measured[criterion]}
            kept, updates = _kept(scores[criterion], width), None
            if refit:
                step = methods.of_phase(settings.recovery.steps, "pass")[0].name
                report(on_progress, Progress("check", f"[check] {step}: down_proj for {criterion} at width {width}"))
                weights = {layer: module.weight.data.float() for layer, module in downs.items()}
                inputs = PassInputs(weights, stats.grams, model, stats.inputs, names)  # type: ignore[union-attr]
                updates = recovery.pass_updates(inputs, kept).updates  # type: ignore[union-attr]
                recoveries[step] = _pruned_perplexity(model, downs, kept, updates, ids, settings.window, prefix)
            if settings.recovery.trains:
                label = f"{criterion} at width {width}"
                report(on_progress, Progress("check", f"[check] recovering {label} ({settings.recovery.label})"))
                student = copy.deepcopy(model)
                prune_in_memory(student, layout, kept, updates)
                for steps, recovered in recovery.recover_model(student, layout.roles, label, on_progress):
                    recoveries[steps] = _perplexity(recovered, ids, settings.window, prefix)
            for recovered, value in recoveries.items():
                worse = None if median is None else value > median
                rows.append(CheckRow(criterion, pct, width, value, worse_than_random=worse, recovery=recovered))
    return CheckOutcome(
        base,
        tuple(rows),
        {"source": source, "tokens": int(ids.numel()), "special_prefix": tokenizer.convert_ids_to_tokens(list(prefix))},
        stats.record if stats else None,
        shared,
    )


def _calibrate(
    model: Any,
    tokenizer: Any,
    checkpoint: Checkpoint,
    names: dict[int, str],
    settings: CheckSettings,
    held_out_text: str,
    on_progress: ProgressCallback | None,
) -> tuple[ActivationStats, int]:
    """The calibration's statistics (what the criteria and the recovery read), and how many paragraphs of the
    held-out text share a 13-word sequence with the calibration data."""
    stats = collect_activations(
        model,
        tokenizer,
        names,
        settings.calibration,
        grams=settings.recovery.reads_grams or any(c in GRAM_CRITERIA for c in settings.criteria),
        source=json.dumps(source_identity(checkpoint), sort_keys=True),
        keep_inputs=settings.recovery.keeps_windows,
        fishers=any(c in FISHER_CRITERIA for c in settings.criteria),
        on_progress=on_progress,
    )
    return stats, shared_ngrams(stats.text, [p for p in held_out_text.split("\n\n") if p.strip()])


def _scores(checkpoint: Checkpoint, layout: Any, criterion: str, stats: Any) -> dict[int, torch.Tensor]:
    if criterion in DATA_CRITERIA:
        return data_scores(checkpoint, layout, stats, criterion)
    return {layer: weight_scores(checkpoint, layout, layer, criterion, 0) for layer in range(layout.num_layers)}


def _random(num_layers: int, width: int, seed: int) -> dict[int, torch.Tensor]:
    return {layer: random_scores(width, seed=seed, layer=layer) for layer in range(num_layers)}


def _kept(scores: dict[int, torch.Tensor], width: int) -> dict[int, torch.Tensor]:
    return {layer: keep(rank(layer_scores), width) for layer, layer_scores in scores.items()}


def _pruned_perplexity(
    model: Any,
    downs: dict[int, Any],
    kept: dict[int, torch.Tensor],
    updates: dict[int, torch.Tensor | NewColumns] | None,
    ids: torch.Tensor,
    window: int,
    prefix: tuple[int, ...],
) -> float:
    """Perplexity with every layer keeping the `kept` neurons: the others' down_proj columns zeroed (and with
    `updates`, the kept columns refit as recovery.refit_member computes), then restored."""
    saved = {}
    try:
        for layer, module in downs.items():
            saved[layer] = module.weight.data.clone()
            removed = removed_of(kept[layer], module.weight.shape[1])
            if updates is not None:
                module.weight.data[:, kept[layer]] = apply_update(saved[layer], kept[layer], removed, updates[layer])
            module.weight.data[:, removed] = 0
        return _perplexity(model, ids, window, prefix)
    finally:
        for layer, weight in saved.items():
            downs[layer].weight.data = weight


def prune_in_memory(
    model: Any,
    layout: MlpLayout,
    kept: dict[int, torch.Tensor],
    updates: dict[int, torch.Tensor | NewColumns] | None,
) -> None:
    """Slice a loaded model's MLP tensors to the `kept` neurons of each layer, as the prune pass writes them: gate
    and up rows (both halves of a fused gate_up), down_proj columns (refit with `updates` when given)."""
    width = layout.intermediate_size
    for name, parameter in mlp_parameters(model, layout.roles).items():
        layer, role = layout.roles[name]
        chosen = kept[layer]
        with torch.no_grad():
            if role in COLUMN_ROLES:
                if updates is None:
                    parameter.data = parameter.data[:, chosen]
                else:
                    parameter.data = apply_update(parameter.data, chosen, removed_of(chosen, width), updates[layer])
            elif role in FUSED_ROLES:
                parameter.data = parameter.data[torch.cat([chosen, chosen + width])]
            elif role in ROW_ROLES:
                parameter.data = parameter.data[chosen]


def _perplexity(model: Any, ids: torch.Tensor, window: int, prefix: tuple[int, ...]) -> float:
    """exp of the mean next-token negative log-likelihood of the text's tokens over every window, each window
    starting with the tokenizer's special prefix (BOS) as the model's inputs do in use."""
    start = first_predicted(prefix)
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows(ids, window, prefix):
            logits = model(chunk[None]).logits[0, start - 1 : -1].float()
            total += torch.nn.functional.cross_entropy(logits, chunk[start:], reduction="sum").item()
            count += chunk.numel() - start
    return math.exp(total / count)
