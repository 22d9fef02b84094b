"""A member's provenance, hubprune.json, as the cards and the checks read it: what was pruned from what, how, and
how the member was recovered. The pruning wing writes it (pruning/member.py); readers go through this typed view
instead of importing the modules that made it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROVENANCE = "hubprune.json"
KEPT_INDICES = "hubprune-kept-indices.json"


@dataclass(frozen=True)
class RefitRecord:
    """How a member's down_proj was refit (recover/refit.py or recover/sequential.py writes it)."""

    method: str  # refit, sequential
    formula: str
    alphas_tried: tuple[float, ...]
    alpha: dict[str, float | None]  # layer -> the chosen alpha; None where no alpha beat the plain columns
    held_out_error: dict[str, Any]  # plain, refit: mean relative error on held-out calibration windows
    tokens: dict[str, int]  # fit, held_out
    seconds: float


@dataclass(frozen=True)
class DistillRecord:
    """How a member was distilled (recover/distill.py writes it)."""

    objective: str
    trained: str
    optimizer: str
    data: dict[str, Any]  # source, sequences {train, held_out}, seq_len, seed, sha256, ...
    steps: int
    tokens: int
    held_out_kl: dict[str, float]  # before, after
    seconds: float
    device: str
    engine: dict[str, Any]  # distributed_type, processes, mixed_precision ({} for members distilled before it was kept)


@dataclass(frozen=True)
class ReconstructionRecord:
    """How a member's MLPs were trained layer by layer (recover/reconstruct.py writes it)."""

    objective: str
    optimizer: str
    steps_per_layer: int
    tokens_per_layer: int
    calibration_tokens: dict[str, int]  # fit, held_out
    held_out_error: dict[str, Any]  # before, after: mean relative error of the MLPs on held-out calibration windows
    seconds: float
    device: str


@dataclass(frozen=True)
class MemberProvenance:
    source: dict[str, Any]
    criterion: str
    calibration: dict[str, Any] | None
    refit: RefitRecord | None
    distillation: DistillRecord | None
    reconstruction: ReconstructionRecord | None
    raw: dict[str, Any]  # the whole file, for what no view names yet


def read(folder: Path) -> MemberProvenance | None:
    """The provenance of the member in `folder`, or None when it has none (a base model)."""
    path = Path(folder) / PROVENANCE
    if not path.exists():
        return None
    found = json.loads(path.read_text(encoding="utf-8"))
    refit, distilled = found.get("recovery"), found.get("distillation")
    return MemberProvenance(
        source=found["source"],
        criterion=found["criterion"],
        calibration=found.get("calibration"),
        refit=_refit(refit) if refit else None,
        distillation=_distillation(distilled) if distilled else None,
        reconstruction=_reconstruction(found["reconstruction"]) if found.get("reconstruction") else None,
        raw=found,
    )


def _refit(record: dict[str, Any]) -> RefitRecord:
    return RefitRecord(
        method=record.get("method", "refit"),
        formula=record["formula"],
        alphas_tried=tuple(record["alphas_tried"]),
        alpha=record["alpha"],
        held_out_error=record["held_out_error"],
        tokens=record["tokens"],
        seconds=record["seconds"],
    )


def _distillation(record: dict[str, Any]) -> DistillRecord:
    return DistillRecord(
        objective=record["objective"],
        trained=record["trained"],
        optimizer=record["optimizer"],
        data=record["data"],
        steps=record["steps"],
        tokens=record["tokens"],
        held_out_kl=record["held_out_kl"],
        seconds=record["seconds"],
        device=record["device"],
        engine=record.get("engine") or {},
    )


def _reconstruction(record: dict[str, Any]) -> ReconstructionRecord:
    return ReconstructionRecord(
        objective=record["objective"],
        optimizer=record["optimizer"],
        steps_per_layer=record["steps_per_layer"],
        tokens_per_layer=record["tokens_per_layer"],
        calibration_tokens=record["calibration_tokens"],
        held_out_error=record["held_out_error"],
        seconds=record["seconds"],
        device=record["device"],
    )
