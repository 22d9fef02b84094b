"""The recovery part of a card's context: how the members were refit or distilled, and the figures each member's
hubprune.json records of it (card_context.py puts it in the context the templates read)."""

from __future__ import annotations

from typing import Any

from hubprune import manifest, provenance


def family_recovery(family: manifest.Family, members: list[provenance.MemberProvenance]) -> dict[str, Any] | None:
    """The refit every member went through, for the method section, as the members record it; None without one."""
    refit = next((m.refit for m in members if m.refit is not None), None)
    if refit is None:
        return None
    read = next((m.calibration for m in members if m.calibration), None) or {}  # what the calibration read
    asked = family.calibration or {}
    return {
        "sequential": refit.method == "sequential",
        "formula": f"    {refit.formula}",
        "alphas": ", ".join(f"{a:g}" for a in refit.alphas_tried),
        "text": f"{read.get('source', asked.get('source'))} (sha256 `{str(read.get('sha256'))[:12]}`), "
        f"{read.get('tokens', asked.get('max_tokens'))} tokens in windows of {asked.get('window')}",
        "overlap": calibration_overlap(read),
    }


def calibration_overlap(read: dict[str, Any]) -> str:
    """Whether the offline suite's texts, which the benchmarks score, share text with the calibration."""
    shared = read.get("offline_suite_paragraphs_sharing_13_words")
    if shared is None:  # a member calibrated before hubprune counted it
        return ""
    if shared == 0:
        return (
            "No paragraph of the offline suite's texts shares a 13-word sequence with the calibration data: its "
            "figures are on text the calibration did not read."
        )
    return (
        f"{shared} paragraph(s) of the offline suite's texts share a 13-word sequence with the calibration data: "
        "its figures partly score text the calibration read, and flatter this model."
    )


def family_distillation(family: manifest.Family, members: list[provenance.MemberProvenance]) -> dict[str, Any] | None:
    """The distillation every member went through, for the method section; None when there was none."""
    record = next((m.distillation for m in members if m.distillation is not None), None)
    if family.distill is None or record is None:
        return None
    settings = family.distill
    text = settings.get("text")
    return {
        "objective": record.objective,
        "trained": record.trained,
        "data": f"{text['source']} (sha256 `{text['sha256'][:12]}`)" if text else record.data["source"],
        "budget": f"{settings['tokens']:,} tokens"
        + (f", at most {settings['steps']} steps" if settings.get("steps") else "")
        + f", batches of {settings['batch']} sequences of {settings['seq_len']} tokens",
        "optimizer": record.optimizer,
        "after": _steps_before(family.recovery, "distill"),
    }


def family_reconstruction(family: manifest.Family, members: list[provenance.MemberProvenance]) -> dict[str, Any] | None:
    """The local reconstruction every member went through, for the method section; None when there was none."""
    record = next((m.reconstruction for m in members if m.reconstruction is not None), None)
    if record is None:
        return None
    return {
        "objective": record.objective,
        "budget": f"{record.steps_per_layer} steps ({record.tokens_per_layer:,} tokens) per layer",
        "optimizer": record.optimizer,
        "tokens": f"{record.calibration_tokens['fit']:,} fitting and {record.calibration_tokens['held_out']:,} "
        "held-out calibration tokens",
        "after": _steps_before(family.recovery, "reconstruct"),
    }


STEP_NAMES = {
    "refit": "the refit",
    "sequential": "the sequential refit",
    "reconstruct": "local reconstruction",
    "distill": "distillation",
}


def _steps_before(recovery: str, step: str) -> str:
    """'After the refit', 'After the refit and distillation', 'After pruning': what ran before `step`."""
    steps = recovery.split("+")
    before = [STEP_NAMES.get(s, s) for s in steps[: steps.index(step)]]
    return "After " + (" and ".join(before) if before else "pruning")


def member_reconstruction(written: provenance.MemberProvenance | None) -> dict[str, Any] | None:
    """This member's local reconstruction: its MLPs' mean relative error on held-out windows, before and after."""
    record = written.reconstruction if written else None
    if record is None:
        return None
    return {
        "before": f"{record.held_out_error['before']:.3g}",
        "after": f"{record.held_out_error['after']:.3g}",
        "seconds": f"{record.seconds:.0f}",
        "device": record.device,
    }


def member_distillation(written: provenance.MemberProvenance | None) -> dict[str, Any] | None:
    """This member's distillation, as its hubprune.json records it: the KL on held-out sequences before and after."""
    record = written.distillation if written else None
    if record is None:
        return None
    return {
        "before": f"{record.held_out_kl['before']:.4g}",
        "after": f"{record.held_out_kl['after']:.4g}",
        "held_out": record.data["sequences"]["held_out"],
        "steps": record.steps,
        "tokens": f"{record.tokens:,}",
        "seconds": f"{record.seconds:.0f}",
        "device": _distilled_on(record),
    }


def _distilled_on(record: provenance.DistillRecord) -> str:
    """Where a member was distilled: `cpu`, or `2 cpu processes (MULTI_CPU)`, with any mixed precision."""
    engine = record.engine  # members distilled before hubprune recorded it ran in one process
    where = record.device
    if engine.get("processes", 1) > 1:
        where = f"{engine['processes']} {where} processes ({engine['distributed_type']})"
    if engine.get("mixed_precision", "no") != "no":
        where += f", mixed precision {engine['mixed_precision']}"
    return where


def member_recovery(written: provenance.MemberProvenance | None) -> dict[str, Any] | None:
    """This member's refit, as its hubprune.json records it: how much it closed the gap on held-out windows."""
    record = written.refit if written else None
    if record is None:
        return None
    chosen = sorted(a for a in record.alpha.values() if a is not None)
    left = len(record.alpha) - len(chosen)
    return {
        "error_plain": f"{record.held_out_error['plain']:.3g}",
        "error_refit": f"{record.held_out_error['refit']:.3g}",
        "alphas": f"{chosen[0]:g} to {chosen[-1]:g} (median {chosen[len(chosen) // 2]:g})" if chosen else "none",
        "left": f"; {left} layer(s) left as pruned, where no α beat the plain columns" if left else "",
        "tokens": f"{record.tokens['fit']} fitting and {record.tokens['held_out']} held-out tokens",
        "seconds": f"{record.seconds:.1f}",
    }
