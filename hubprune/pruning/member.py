"""What a member folder holds besides its weights, and what makes a family one family: the config with the new
width, the copied tokenizer and licence files, the kept indices, hubprune.json (the member's provenance, read
through hubprune/provenance.py), its family.json record, and the identity a resumed build must match."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from hubprune._version import __version__
from hubprune.manifest import MemberRecord, SourceRecord
from hubprune.provenance import KEPT_INDICES, PROVENANCE
from hubprune.pruning.calibrate import CALIBRATION_SEED, GENERATED, MIXED, CalibrationSettings, calibration_text
from hubprune.pruning.checkpoint import Checkpoint
from hubprune.pruning.plan import FamilyPlan, MemberPlan
from hubprune.pruning.prune import MlpLayout
from hubprune.pruning.source import source_identity

TIE_RULE = "descending float32 score; equal scores keep the lower neuron index first; kept indices ascending"


def finish_member(
    checkpoint: Checkpoint,
    layout: MlpLayout,
    plan: FamilyPlan,
    member: MemberPlan,
    folder: Path,
    kept: torch.Tensor,
    how: dict[str, Any],
) -> None:
    """Write the member's config, copied files, kept indices and hubprune.json beside its weights. `how`: criterion,
    seed, multiple_of, calibration (the record, or None) and recovery (the pass step's record, or None)."""
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
        "criterion": how["criterion"],
        "seed": how["seed"],
        "calibration": how["calibration"],  # the text a data-aware criterion or the recovery read, else None
        "recovery": how[
            "recovery"
        ],  # how down_proj was refit (recover/refit.py), else None: the kept columns as they were
        "distillation": None,  # how the member was distilled (recover/distill.py), written once it was, else None
        "target": {"kind": member.target.kind, "value": member.target.value},
        "multiple_of": how["multiple_of"],
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
    write_provenance(folder, provenance)


def write_provenance(folder: Path, provenance: dict[str, Any]) -> None:
    (folder / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def add_records(folder: Path, records: dict[str, Any]) -> None:
    """Add the recovery steps' records (by their hubprune.json key) to the member's provenance."""
    provenance = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    write_provenance(folder, {**provenance, **records})


def member_record(member: MemberPlan) -> MemberRecord:
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


def source_record(checkpoint: Checkpoint, plan: FamilyPlan) -> SourceRecord:
    return SourceRecord.of(
        plan.shape,
        id=checkpoint.source,
        revision=checkpoint.revision,
        model_type=str(checkpoint.config.get("model_type")),
        origin=checkpoint.origin,
        folder=str(checkpoint.folder.resolve()),
    )


def calibration_identity(calibration: CalibrationSettings | None, capped: bool) -> dict[str, Any] | None:
    """What makes a data-aware family's calibration: the text (by name and sha256), how much of it was read, and
    with a memory cap how the model was loaded (in the source dtype, not float32: the statistics differ slightly,
    so one family is calibrated one way). None for the weight criteria, which read no text."""
    if calibration is None:
        return None
    if calibration.text == GENERATED:  # made by the source itself, whose identity the family already checks
        identity = {"source": GENERATED, "seed": CALIBRATION_SEED}
    elif calibration.text == MIXED:  # the shipped part, then generated as above
        text, _ = calibration_text(calibration)
        identity = {
            "source": MIXED,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "seed": CALIBRATION_SEED,
        }
    else:
        text, source = calibration_text(calibration)
        identity = {"source": source, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    identity |= {"max_tokens": calibration.max_tokens, "window": calibration.window}
    return {**identity, "load": "source dtype, big-model loading"} if capped else identity
