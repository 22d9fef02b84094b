"""What the card templates see: every table, line and note of a card, built from the family and its results.

The templates only lay these out, so that a user's own templates (--template-dir) get the same facts, already
formatted. Everything comes from family.json and the results views; a number that was not measured shows as
"not measured", never as a guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubprune import manifest, provenance
from hubprune.local_paths import command_without_local_paths
from hubprune.measure.base_model import base_label
from hubprune.pruning.gguf import DEFAULT_PACKAGE, DEFAULT_PACKAGE_VERSION, EMBEDDED_DEFAULT_BASE, is_embedded_default
from hubprune.pruning.importance import DATA_CRITERIA
from hubprune.publish import gguf_context, recovery_context
from hubprune.publish.formatting import (
    bytes_text,
    change_text,
    energy_text,
    fraction_tasks,
    metric_text,
    params_text,
    ratio_text,
    score_text,
    score_with_change,
    stderr_text,
    timed_text,
)
from hubprune.publish.licence import EMBEDDED_DEFAULT_ORIGINAL, Licence, licence_text
from hubprune.publish.results import BatchFigures, ModelResults, TaskScore, benchmarks

HUB = "https://huggingface.co"
CRITERIA = {
    "maw": ("MAW (PPM)", "s_i = (max_j G[i,j] + |min_j G[i,j]|) + (max_j U[i,j] + |min_j U[i,j]|)"),
    "ppm": ("PPM (MAW)", "s_i = (max_j G[i,j] + |min_j G[i,j]|) + (max_j U[i,j] + |min_j U[i,j]|)"),
    "vow": ("VOW", "s_i = var(G_i) + var(U_i)   (unbiased variance of each row)"),
    "pon": ("PON", "s_i = ||G_i||_1 * ||U_i||_1"),
    "l2": ("L2", "s_i = ||G_i||_2 + ||U_i||_2"),
    "activation": (
        "activation",
        "s_i = mean_t |h_i(t)| * ||D[:,i]||_2   (h: down_proj's input on the calibration text, D: down_proj)",
    ),
    "hybrid": (
        "hybrid (optipfair)",
        "s_i = (g_i/max g + u_i/max u + d_i/max d) * ||h_i||_2   (g, u, d: MAW peak-to-peak)",
    ),
    "obs": (
        "structured OBS",
        "greedy removal by ||W[:,j]||^2 / [(G + lambda I)^-1]_jj, the others re-solved after each group "
        "(G = sum_t h(t) h(t)^T)",
    ),
    "obs-fisher": (
        "structured OBS, output-weighted",
        "greedy removal by W[:,j]^T F W[:,j] / [(G + lambda I)^-1]_jj, the others re-solved after each group "
        "(F: the layer's output Fisher, the curvature of KL(base || member))",
    ),
    "random": ("random", "s_i drawn uniformly at random (seeded): the baseline every criterion must beat"),
}
# What the offline suite's texts are, beside the calibration's (a score on the calibration's own domain flatters)
TEXT_DOMAINS = {
    "hubprune_jargon_ppl": "hubprune_jargon_ppl scores the first paragraphs of the Jargon File, whose second half is "
    "hubprune's default calibration text.",
    "hubprune_botchan_ppl": "hubprune_botchan_ppl scores fiction (Botchan, tr. 1919), another domain, which no "
    "calibration default, setting or tuning of hubprune reads.",
}
COMMAND_ORDER = ("build-family", "eval", "profile")  # the commands that made the weights and the numbers
SPREAD_NOTE_ABOVE = 0.05  # the bench's target for repeatable medians
FIGURE_LABELS = {"ttft": "time to first token", "decode_throughput": "decode throughput", "e2e_latency": "end-to-end"}


def _published_commands(family: manifest.Family) -> list[str]:
    """The commands that made the weights and the numbers, as typed but with local paths written as names: a
    card is published, the builder's folders are not."""
    return [command_without_local_paths(family.commands[stage]) for stage in COMMAND_ORDER if stage in family.commands]


def common_context(
    family: manifest.Family,
    base: ModelResults,
    members: list[ModelResults],
    base_id: str | None,
    license_info: Licence,
    namespace: str | None,
    plots: list[dict[str, str]],
) -> dict[str, Any]:
    """What every card shows: the family card's whole context, and the part of each member's it shares."""
    written = _provenances(members)  # read once: the method section's recovery and distillation both use them
    label = base_label(family)
    name, formula = CRITERIA.get(family.criterion, (family.criterion, "see hubprune/pruning/importance.py"))
    data_aware = family.criterion in DATA_CRITERIA
    note = None
    if family.criterion == "random":
        note = f"Random scores, seed {family.seed}: this family is a baseline, not the paper's method."
    models = [base, *members]
    return {
        "namespace": namespace,
        "family_size": len(members),
        "base": {
            "label": label,
            "link": f"[{base_id}]({HUB}/{base_id})" if base_id else f"`{label}` (a local checkpoint)",
            "width": base.width,
            "ratio": f"{base.ratio:.2f}",
        },
        "criterion": {
            "name": name,
            "formula": f"    {formula}",
            "note": note,
            "kind": "criterion, on the base's activations over calibration text" if data_aware else "weight criterion",
            "read": f"the stored weights and the calibration text, {(family.calibration or {}).get('source')}"
            if data_aware
            else "the stored weights",
        },
        "after_pruning": _after_pruning_sentences(family),
        "versions": {"hubprune": family.hubprune_version},
        "table": _family_table(models, namespace, current=None, calibration=family.calibration),
        "efficiency": _efficiency(models),
        "correlations": _correlations(family.analysis.get("correlations") or []),
        "criteria_check": _criteria_check(family.analysis.get("criteria_check")),
        "recovery": recovery_context.family_recovery(family, written),
        "distillation": recovery_context.family_distillation(family, written),
        "reconstruction": recovery_context.family_reconstruction(family, written),
        "commands": _published_commands(family),
        "provenance": _provenance(family, base_id, models),
        "limitations": _limitations(family, models),
        "license": licence_text(license_info),
        "plots": plots,
        "gguf_files": gguf_context.family_gguf(members),
    }


def member_context(
    common: dict[str, Any],
    family: manifest.Family,
    base: ModelResults,
    members: list[ModelResults],
    member: ModelResults,
    namespace: str | None,
) -> dict[str, Any]:
    """A member card's context: the common one, with this member's facts and its row highlighted."""
    written = provenance.read(member.folder) if member.folder else None
    repo_id = f"{namespace or 'YOUR-NAMESPACE'}/{member.name}"
    return {
        **common,
        "member": {
            "name": member.name,
            "repo_id": repo_id,
            "width": member.width,
            "ratio": f"{member.ratio:.2f}",
            "pct_removed": f"{(1 - member.width / base.width) * 100:.1f} %",
            "params": params_text(member.params),
            "params_vs_base": f"{member.params / base.params * 100:.1f} %",
            "size": bytes_text(member.weight_bytes),
        },
        "table": _family_table([base, *members], namespace, current=member.name, calibration=family.calibration),
        "member_results": _member_results(member, base, fraction_tasks([base, *members])),
        "member_recovery": recovery_context.member_recovery(written),
        "member_distillation": recovery_context.member_distillation(written),
        "member_reconstruction": recovery_context.member_reconstruction(written),
        "eval_settings": _eval_settings_line(member),
        "gguf": gguf_context.member_gguf(member.folder, written, repo_id, member.width),
    }


# --- the family table and a member's results ---------------------------------------------------------------------


def _family_table(
    models: list[ModelResults], namespace: str | None, current: str | None, calibration: dict[str, Any] | None = None
) -> dict[str, Any]:
    base = models[0]
    columns = benchmarks(models)
    fractions = fraction_tasks(models)
    batch = _first_batch(models)
    header = ["model", "ratio", "MLP width", "parameters", "weights"]
    header += [f"{c.task} ({metric_text(c.metric, c.higher_is_better)})" for c in columns]
    if batch is not None:
        header += [f"decode tokens/s (batch {batch})", "peak memory"]
    rows = []
    for model in models:
        if model is base:
            cell = "base"
        elif namespace:
            cell = f"[{model.name}]({HUB}/{namespace}/{model.name})"
        else:
            cell = model.name
        if model.name == current:
            cell = f"**{model.name}** (this model)"
        row = [
            cell,
            f"{model.ratio:.2f}",
            str(model.width),
            f"{params_text(model.params)} ({model.params / base.params * 100:.1f} %)",
            bytes_text(model.weight_bytes),
        ]
        for column in columns:
            task = column.task
            row.append(score_with_change(model.value(task), base.value(task), task in fractions, is_base=model is base))
        if batch is not None:
            mine, theirs = model.batch(batch), base.batch(batch)
            row.append(_throughput(mine, theirs, model is base))
            row.append(bytes_text(mine.peak_memory_bytes) if mine and mine.peak_memory_bytes else "not measured")
        rows.append(row)
    notes = []
    limited = [f"{score.task} (first {score.limit} samples)" for score in _limited(models)]
    if limited:
        notes.append(
            "Scored on part of a benchmark, so compare these within the family only: " + ", ".join(limited) + "."
        )
    if not columns:
        notes.append("Benchmarks: not measured.")
    texts = [TEXT_DOMAINS[c.task] for c in columns if c.task in TEXT_DOMAINS]
    if texts:  # which benchmark text is of the calibration's domain: a score there flatters a data-aware member
        read = "read no calibration text" if calibration is None else f"was calibrated on {calibration.get('source')}"
        notes.append(" ".join(texts) + f" This family {read}.")
    return {"header": header, "rows": rows, "notes": notes}


def _limited(models: list[ModelResults]) -> list[TaskScore]:
    """The first score of each task that was scored on part of its benchmark."""
    found: dict[str, TaskScore] = {}
    for model in models:
        for task, score in model.scores.items():
            if score.limit:
                found.setdefault(task, score)
    return list(found.values())


def _member_results(member: ModelResults, base: ModelResults, fractions: set[str]) -> list[dict[str, str]]:
    rows = []
    for task, score in member.scores.items():
        fraction = task in fractions
        value = score_text(score.value, fraction)
        if score.stderr is not None:
            value += stderr_text(score.stderr, fraction)
        samples = "?" if score.effective_samples is None else str(score.effective_samples)
        if score.original_samples is not None:
            samples += f" of {score.original_samples}"
        rows.append(
            {
                "task": task,
                "metric": score.metric,
                "shots": str(score.num_fewshot),
                "samples": samples,
                "value": value,
                "base": score_text(base.value(task), fraction),
                "change": change_text(score.value, base.value(task), fraction),
            }
        )
    return rows


def _eval_settings_line(member: ModelResults) -> str:
    record = member.evaluation
    if record is None:
        return ""
    return (
        f"lm-eval {_known(record.lm_eval_version)}, suite `{_known(record.suite)}`, {_known(record.backend, 'hf')} "
        f"backend on {_known(record.device)} in {_known(record.dtype)}, batch size {_known(record.batch_size)}; "
        "± is lm-eval's standard error (bootstrapped for perplexities, where it reports one)."
    )


# --- efficiency --------------------------------------------------------------------------------------------------


def _first_batch(models: list[ModelResults]) -> int | None:
    sizes = sorted({b.batch_size for m in models if m.profile for b in m.profile.batches})
    return sizes[0] if sizes else None


def _throughput(mine: BatchFigures | None, base: BatchFigures | None, is_base: bool) -> str:
    if mine is None:
        return "not measured"
    text = f"{mine.decode_tokens_per_s:.1f}"
    if not is_base and base is not None:
        text += f" {ratio_text(mine.decode_tokens_per_s, base.decode_tokens_per_s)}"
    return text


def _efficiency(models: list[ModelResults]) -> dict[str, Any] | None:
    profiles = [m.profile for m in models if m.profile]
    if not profiles:
        return None
    first = profiles[0]  # the settings and machine of the first model profiled stand for the family's
    base = models[0]
    rows, notes = [], []
    for model in models:
        if not model.profile:
            reason = f": {model.profile_note}" if model.profile_note else ""
            notes.append(f"{'The base' if model is base else model.name} was not profiled{reason}.")
            continue
        for batch in model.profile.batches:
            reference = base.batch(batch.batch_size) if model is not base else None
            rows.append(
                [
                    "base" if model is base else model.name,
                    str(batch.batch_size),
                    timed_text(batch.ttft_s * 1000, "ms", reference and reference.ttft_s * 1000),
                    timed_text(batch.decode_tokens_per_s, "", reference and reference.decode_tokens_per_s),
                    timed_text(batch.e2e_s, "s", reference and reference.e2e_s),
                    bytes_text(batch.peak_memory_bytes) if batch.peak_memory_bytes else "not measured",
                    energy_text(batch.joules_per_token, batch.energy_method, batch.energy_source),
                ]
            )
            load = batch.other_cpu_load
            if isinstance(load, (int, float)) and load > 0.25:
                notes.append(
                    f"While {'the base' if model is base else model.name} was measured at batch {batch.batch_size}, "
                    f"other processes kept {load:.2f} CPUs busy: its timings are less reliable."
                )
    batches = [b for profile in profiles for b in profile.batches]
    reasons = sorted({b.energy_reason or "" for b in batches if b.joules_per_token is None} - {""})
    spread = _largest_spread(models)
    if spread is not None:
        notes.append(spread)
    if reasons:
        notes.append("Energy not measured: " + "; ".join(reasons) + ".")
    if any(b.energy_method == "estimated" for b in batches):
        notes.append("Energy marked *estimated* comes from CodeCarbon's power model, not from a hardware counter.")
    hardware = first.gpu or first.cpu_model or "unknown hardware"
    if not first.gpu and first.cpus_usable:
        hardware += f", {first.cpus_usable} CPUs"
    return {
        "hardware": hardware,
        "device": _known(first.device),
        "dtype": _known(first.dtype),
        "prompt_tokens": _known(first.prompt_tokens),
        "new_tokens": _known(first.new_tokens),
        "min_runs": _known(first.min_runs),
        "rounds": first.rounds,
        "memory_how": _memory_how(first.batches),
        "rows": rows,
        "notes": notes,
    }


def _largest_spread(models: list[ModelResults]) -> str | None:
    """One line naming the largest difference between a model's rounds, when it is above SPREAD_NOTE_ABOVE: the
    machine's speed drifted while it was measured, and differences between members of that size are noise."""
    base = models[0]
    found = [
        (value, "the base" if model is base else model.name, batch.batch_size, figure)
        for model in models
        if model.profile
        for batch in model.profile.batches
        for figure, value in batch.spread.items()
    ]
    if not found or max(found)[0] <= SPREAD_NOTE_ABOVE:
        return None
    value, name, size, figure = max(found)
    return (
        f"The machine's speed drifted during the measurement: the rounds' medians of one model differed by up to "
        f"{value * 100:.0f} % (coefficient of variation; {FIGURE_LABELS.get(figure, figure)} of {name} at batch {size}), so "
        "differences between members smaller than that are not meaningful."
    )


def _memory_how(batches: tuple[BatchFigures, ...]) -> str:
    how = batches[0].peak_memory_how if batches else None
    return "the process's peak memory" if how is None else how


# --- correlations, criteria check, provenance, limitations ---------------------------------------------------------


def _correlations(found: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for entry in found:
        rows.append(
            {
                "x": entry["x"],
                "y": entry["y"],
                "n": str(entry["n"]),
                "r": "constant" if entry.get("r") is None else f"{entry['r']:+.3f}",
                "p": "" if entry.get("p") is None else f"{entry['p']:.3g}",
            }
        )
    return rows


def _criteria_check(found: dict[str, Any] | None) -> dict[str, Any] | None:
    """The table of `build-family --check-criteria`: the criterion against random pruning at each width."""
    if not found or not found.get("rows"):
        return None
    rows = []
    randoms = {r["pct"]: r for r in found["rows"] if r["criterion"] == "random"}
    for row in found["rows"]:
        if row["criterion"] == "random":
            continue
        reference = randoms.get(row["pct"])
        rows.append(
            [
                f"{row['pct']} %",
                row["criterion"]
                if row.get("recovery", "none") == "none"
                else f"{row['criterion']} + {row['recovery']}",
                f"{row['perplexity']:.4g}",
                f"{reference['perplexity']:.4g} [{reference['low']:.4g}, {reference['high']:.4g}]"
                if reference
                else "-",
                {True: "**worse than random**", False: "better than random"}.get(row.get("worse_than_random"), "-"),
            ]
        )
    text = found.get("text", {})
    calibration = found.get("calibration")
    return {
        "rows": rows,
        "base": f"{found['base_perplexity']:.4g}",
        "text": f"{text.get('source')}, {text.get('tokens')} tokens",
        "calibration": f"{calibration['source']}, {calibration['tokens']} tokens" if calibration else None,
        "warnings": found.get("warnings", []),
    }


def _provenances(members: list[ModelResults]) -> list[provenance.MemberProvenance]:
    """The members' hubprune.json, as typed views (a model without one, such as the base, has none)."""
    found = [provenance.read(m.folder) for m in members if m.folder]
    return [p for p in found if p is not None]


def _provenance(family: manifest.Family, base_id: str | None, models: list[ModelResults]) -> list[tuple[str, str]]:
    source = family.source
    rows = [("base checkpoint", _source_label(family, base_id))]
    if source.revision:
        rows.append(("base revision", f"`{source.revision}`"))
    origin = source.origin or {}
    if origin.get("format") == "gguf":
        rows.append(("GGUF file", f"{origin.get('file')} (sha256 `{origin.get('sha256')}`)"))
        rows.append(
            (
                "dequantized",
                f"from {origin.get('quantization')} to {origin.get('dequantized_to')} by {origin.get('converter')}",
            )
        )
    rows.append(("criterion", family.criterion + (f" (seed {family.seed})" if family.seed is not None else "")))
    rows.append(("hubprune", family.hubprune_version))
    evaluated = next((m.evaluation for m in models if m.evaluation), None)
    profiled = next((m.profile for m in models if m.profile), None)
    # The packages as evaluated, else as profiled: the same environment measured both, as a rule.
    versions = (evaluated.versions if evaluated else None) or (profiled.versions if profiled else None) or {}
    rows.append(("lm-eval", _known(evaluated.lm_eval_version if evaluated else None, "not used")))
    for package in ("transformers", "torch"):
        rows.append((package, versions.get(package, "not recorded")))
    hardware = []
    if evaluated:
        hardware.append(f"benchmarks: {evaluated.hardware or _known(evaluated.device)}")
    if profiled:
        hardware.append(f"profile: {profiled.gpu or _known(profiled.cpu_model)}")
    rows.append(("hardware", "; ".join(hardware) or "not recorded"))
    return rows


def _source_label(family: manifest.Family, base_id: str | None) -> str:
    """The base as readers can find it: its Hub id, or the file's name, never this machine's local path."""
    source = family.source
    if is_embedded_default(source.origin):
        return f"{EMBEDDED_DEFAULT_BASE} ({source.origin['file']}, as packaged in {DEFAULT_PACKAGE} {DEFAULT_PACKAGE_VERSION})"  # type: ignore[index]
    if base_id:
        return base_id
    return f"a local checkpoint named `{Path(source.id).name}`"


RECOVERY_DONE = {
    "refit": "down_proj's kept columns refit without training",
    "sequential": "down_proj's kept columns refit layer by layer without training",
    "distill": "the MLPs distilled from the base",
    "reconstruct": "each MLP trained layer by layer toward the unpruned one",
}


def _after_pruning(family: manifest.Family) -> str:
    """What the recovery steps did after pruning, as a phrase ("" for none)."""
    steps = [RECOVERY_DONE.get(step, step) for step in family.recovery.split("+") if step != "none"]
    return " and ".join(steps)


def _after_pruning_sentences(family: manifest.Family) -> dict[str, str]:
    """What the cards' opening lines say happened after pruning: the member card's sentence, the family card's end."""
    done = _after_pruning(family)
    if not done:
        return {
            "member": "Nothing else was changed or trained: the attention, embeddings and norms are the base's own.",
            "family": " and nothing else changed",
        }
    return {
        "member": f"After pruning: {done} (see Method); the attention, embeddings and norms are the base's own.",
        "family": f", then {done}",
    }


def _limitations(family: manifest.Family, models: list[ModelResults]) -> list[str]:
    done = _after_pruning(family)
    afterwards = f"then {done} (see Method)" if done else "with no retraining or distillation afterwards"
    lines = [
        f"Only the MLP width was reduced, {afterwards}. The paper (Martra 2025) found "
        "that knowledge-heavy benchmarks (MMLU, GSM8K) degrade with pruning, while instruction "
        "following (IFEval) improved for base models only: on Llama-3.2-1B-Instruct IFEval fell. Rely on this "
        "family's own measurements above, not on the paper's.",
    ]
    check = family.analysis.get("criteria_check") or {}
    if any(r.get("worse_than_random") for r in check.get("rows", [])):
        lines.append(
            f"On this base, the {family.criterion} criterion did worse than random pruning at some widths (see "
            "Against random pruning under Method): choose members, or a criterion, with that in mind."
        )
    if not any(m.scores for m in models):
        lines.append("Benchmarks were not measured.")
    elif not models[0].scores:
        lines.append("The base model was not benchmarked here, so no change against it is shown.")
    if not any(m.profile for m in models):
        lines.append("Latency, throughput, memory and energy were not measured.")
    origin = family.source.origin or {}
    if origin.get("format") == "gguf":
        original = f" of {EMBEDDED_DEFAULT_ORIGINAL}" if is_embedded_default(origin) else ""
        lines.append(
            f"The base weights were dequantized from a {origin.get('quantization')} GGUF file{original}, so every "
            "model here carries that quantization's error: they are not the original float weights."
        )
    return lines


def _known(value: Any, default: str = "?") -> Any:
    """A recorded setting, or `default` where the results file did not record it."""
    return default if value is None else value
