"""Model cards: a README.md per member and one for the family, from the Jinja templates in templates/.

This module renders and writes; what a card says is decided elsewhere: results.py reads what was measured,
card_context.py turns it into the templates' context, formatting.py writes its numbers, licence.py builds the
YAML metadata and checks it against the rules the Hub enforces, and plots.py draws the plots. Every card and
plot is rendered before any file is written, so an error leaves the old ones untouched, and rendering is
deterministic: the same inputs give byte-identical cards and plots.
"""

from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hubprune import manifest
from hubprune.errors import CardError
from hubprune.fields import setting
from hubprune.files import write_bytes_atomic
from hubprune.pruning.checkpoint import is_hub_id
from hubprune.publish.card_context import common_context, member_context
from hubprune.publish.licence import CARD_FILE, base_hub_id, member_metadata, resolve_license, validate_metadata
from hubprune.publish.plots import PLOT_FILES, PLOTS_DIR, plot_panels, plot_refs, render_plots
from hubprune.publish.results import collect_results

STAGE = "card"


@dataclass(frozen=True)
class CardSettings:
    namespace: str | None = setting(
        None, "Hub user or organisation the members are published under (repo ids in the cards)."
    )
    license: str | None = setting(None, "Hub licence id of the base (e.g. apache-2.0), when not found.")
    license_name: str | None = setting(None, "With --license other: the licence's name.")
    license_link: str | None = setting(None, "With --license other: its URL (or LICENSE file).")
    base_model: str | None = setting(None, "Hub id of the base, when the source is a local folder.")
    template_dir: Path | None = setting(
        None, "Folder of card templates that replace the built-in ones of the same name.", parse="path"
    )


@dataclass(frozen=True)
class CardOutcome:
    family_card: Path
    member_cards: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    licence: str | None = None  # the licence id the cards declare
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # member -> {card or plot path: size in bytes}


def render_cards(family_dir: Path, settings: CardSettings = CardSettings(), *, write: bool = True) -> CardOutcome:
    """Render every built member's README.md and plots, and the family's README.md and plots.

    Settings given here are stored in family.json, so a later render (or `hubprune push`) keeps them. With
    write=False nothing is written: the outcome says what would be (push --dry-run uses it).
    Raises CardError for a folder that is no family, a template error, or metadata the Hub would reject.
    """
    family_dir = Path(family_dir)
    family = manifest.open_family(family_dir, CardError)
    settings = _merged_settings(family, settings)
    _check_namespace(settings.namespace)
    base, members = collect_results(family_dir, family)
    if not members:
        raise CardError(f"{family_dir} has no built member to write a card for: run `hubprune build-family` first")
    license_info = resolve_license(
        family,
        members[0].folder,
        license=settings.license,
        license_name=settings.license_name,
        license_link=settings.license_link,
    )
    base_id = settings.base_model or base_hub_id(family)
    environment = _templates(settings.template_dir)
    warnings: list[str] = []
    if license_info.name_prefix:
        for member in members:
            if not member.name.startswith(license_info.name_prefix):
                warnings.append(
                    f"{member.name}: the {license_info.id} licence asks that derived models' names begin with "
                    f"{license_info.name_prefix!r}"
                )
    panels = plot_panels(base, members)
    common = common_context(family, base, members, base_id, license_info, settings.namespace, plot_refs(panels))
    # Render every card and plot before writing any, so an error leaves the old ones untouched.
    texts: dict[str, str] = {}
    images: dict[Path, dict[str, bytes]] = {}
    for member in members:
        context = member_context(common, family, base, members, member, settings.namespace)
        metadata = member_metadata(family, member, base_id, license_info)
        validate_metadata(metadata, f"{member.name}/{CARD_FILE}")
        texts[member.name] = _render(environment, "member.md.j2", {**context, "metadata": _yaml(metadata)})
        images[member.folder] = render_plots(panels, member.ratio, member.name)  # type: ignore[index]
    family_text = _render(environment, "family.md.j2", common)
    images[family_dir] = render_plots(panels, None, f"{common['base']['label']} family")
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
        write_bytes_atomic(folder / CARD_FILE, texts[member.name].encode("utf-8"))
        manifest.record_stage(
            family_dir,
            member.name,
            STAGE,
            status="done",
            sha256=_sha256(texts[member.name]),
            namespace=settings.namespace,
        )
    _write_plots(family_dir, images[family_dir])
    write_bytes_atomic(family_dir / CARD_FILE, family_text.encode("utf-8"))
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


# --- templates and files -------------------------------------------------------------------------------------------


def _templates(template_dir: Path | None) -> Any:
    import jinja2

    builtin = Path(str(resources.files("hubprune.templates")))
    loaders = [jinja2.FileSystemLoader(str(builtin))]
    if template_dir is not None:
        if not Path(template_dir).is_dir():
            raise CardError(f"`template_dir` {template_dir} is not a folder: give a folder of .md.j2 templates")
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


def _write_plots(folder: Path, images: dict[str, bytes]) -> None:
    """Write the plots that have data and remove those that no longer have any."""
    for name in PLOT_FILES.values():
        path = folder / PLOTS_DIR / name
        if name in images:
            write_bytes_atomic(path, images[name])
        elif path.exists():
            path.unlink()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
