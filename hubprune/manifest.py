"""family.json, the family's manifest: what was built from what, and each member's stage status.

Every stage (prune now; eval, profile, card and push later) reads it and writes its own part back under
members[i]["stages"][<stage>], so each stage can run alone and a stopped build resumes where it stopped.
Writes are atomic (temporary file, then rename) so a crash never leaves half a manifest.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from hubprune.errors import HubpruneError, OutputError
from hubprune.files import write_json_atomic

MANIFEST = "family.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SourceRecord:
    id: str  # local path or Hub repo id, as given
    revision: str | None  # resolved commit sha for Hub sources
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    params_total: int
    params_mlp: int
    weight_bytes: int
    origin: dict[str, Any] | None = None  # e.g. the GGUF file the weights were dequantized from
    folder: str | None = None  # the local checkpoint folder the family was built from (Hub cache, GGUF cache)

    @classmethod
    def of(cls, shape: Any, **identity: Any) -> SourceRecord:
        """The record of a source of this shape (a dataclass such as pruning.plan.ModelShape, whose fields of the
        same names it takes); `identity` gives the fields a shape does not know (id, revision, model_type, origin,
        folder)."""
        shared = {f.name for f in fields(cls)} & {f.name for f in fields(shape)}
        return cls(**{name: getattr(shape, name) for name in shared}, **identity)


@dataclass(frozen=True)
class MemberRecord:
    name: str
    path: str  # relative to the family folder
    target: dict[str, str]  # {"kind": "ratio"|"pct"|"size", "value": "2.4"}
    ratio: float
    intermediate_size: int
    params_total: int
    params_mlp: int
    weight_bytes: int
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def with_stage(self, stage: str, **record: Any) -> MemberRecord:
        return replace(self, stages={**self.stages, stage: record})


@dataclass(frozen=True)
class Family:
    hubprune_version: str
    source: SourceRecord
    criterion: str
    seed: int | None
    multiple_of: int | None
    members: tuple[MemberRecord, ...]
    format: int = FORMAT_VERSION
    analysis: dict[str, Any] = field(default_factory=dict)  # family-level results, e.g. metric correlations
    commands: dict[str, str] = field(default_factory=dict)  # stage -> the last command line that ran it
    card: dict[str, Any] = field(default_factory=dict)  # the card settings chosen (namespace, licence, base id)
    # the text a data-aware criterion read (source name, sha256, tokens, window); part of what the family is
    calibration: dict[str, Any] | None = None
    recovery: str = "none"  # what recovered the members after pruning (PruneSettings.recover); part of the family
    distill: dict[str, Any] | None = None  # the distillation's settings (DistillSettings.identity); part of the family
    reconstruct: dict[str, Any] | None = None  # local reconstruction's settings (ReconstructSettings.identity); too

    def built_members(self) -> tuple[MemberRecord, ...]:
        """The members whose weights were written and verified (widest first): the ones later stages use."""
        return tuple(m for m in self.members if m.stages.get("prune", {}).get("status") == "done")

    def member(self, name: str) -> MemberRecord | None:
        return next((m for m in self.members if m.name == name), None)

    def with_analysis(self, **entries: Any) -> Family:
        return replace(self, analysis={**self.analysis, **entries})

    def with_member(self, record: MemberRecord) -> Family:
        """This family with `record` added or replacing the member of the same name, kept widest first."""
        others = [m for m in self.members if m.name != record.name]
        members = sorted([*others, record], key=lambda m: -m.intermediate_size)
        return replace(self, members=tuple(members))


@dataclass(frozen=True)
class Location:
    """What a folder given to a command is: a family (it holds family.json), a member of one (its parent's
    family.json lists it), a plain checkpoint (it holds config.json), or none of these ("unknown")."""

    kind: Literal["family", "member", "checkpoint", "unknown"]
    path: Path
    family_dir: Path | None = None  # the family folder, for a family or a member
    member: MemberRecord | None = None  # the member's record, for a member


def locate(path: Path) -> Location:
    path = Path(path)
    if (path / MANIFEST).exists():
        return Location("family", path, path)
    parent = path.resolve().parent
    if (parent / MANIFEST).exists():
        record = next((m for m in load(parent).members if (parent / m.path).resolve() == path.resolve()), None)
        if record is not None:
            return Location("member", path, parent, record)
    if (path / "config.json").exists():
        return Location("checkpoint", path)
    return Location("unknown", path)


def open_family(path: Path, error: type[HubpruneError] = OutputError) -> Family:
    """The manifest of the family folder `path`, or `error` with a message that says what to give instead."""
    where = locate(path)
    if where.kind != "family":
        fix = (
            "it is a member, give its family folder" if where.kind == "member" else "give the folder build-family wrote"
        )
        raise error(f"{path} is not a hubprune family (no {MANIFEST}): {fix}")
    try:
        return load(path)
    except OutputError as exc:
        raise error(str(exc)) from None


def not_a_model(path: Path) -> str:
    """The one-line message for a path that is neither a family nor a checkpoint folder."""
    return f"{path} is neither a hubprune family (family.json) nor a checkpoint folder (config.json): give one of them"


def load(folder: Path) -> Family:
    """The manifest in `folder`, checked field by field against the dataclasses above: a damaged family.json is
    one OutputError that says what is wrong with it, never a crash further on."""
    path = Path(folder) / MANIFEST
    fix = "restore it, or rebuild the family in a new folder"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise OutputError(f"the family manifest {path} is not UTF-8 text: {fix}") from None
    except json.JSONDecodeError as exc:
        raise OutputError(f"the family manifest {path} is not valid JSON ({exc}): {fix}") from None
    except OSError as exc:
        raise OutputError(f"cannot read the family manifest {path} ({exc.strerror or exc}): {fix}") from None
    if isinstance(data, dict) and data.get("format") != FORMAT_VERSION:
        raise OutputError(
            f"{path} has manifest format {data.get('format')!r}; this hubprune reads format {FORMAT_VERSION}: "
            "upgrade hubprune or rebuild the family"
        )
    try:
        return _parse(Family, data, "")
    except _WrongShape as exc:
        raise OutputError(f"{path} is not a valid hubprune family manifest: {exc}: {fix}") from None


class _WrongShape(ValueError):
    """A manifest value that does not have the type its dataclass field says."""


def _parse(cls: type, data: Any, where: str) -> Any:
    """An instance of the dataclass `cls` from JSON `data`, each field checked against its type hint. Keys the
    dataclass does not know are ignored (a newer hubprune may add some); a field without a default must be there."""
    if not isinstance(data, dict):
        raise _WrongShape(f"{where or 'it'} is {_json_kind(data)}, not an object")
    hints = get_type_hints(cls)
    values = {}
    for spec in fields(cls):
        if spec.name in data:
            values[spec.name] = _checked(data[spec.name], hints[spec.name], f"{where}.{spec.name}".lstrip("."))
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise _WrongShape(f"{where or 'it'} lacks {spec.name!r}")
    return cls(**values)


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` converted to `hint` (a dataclass, a tuple of them, or a plain JSON type), or _WrongShape."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        if value is None and type(None) in args:
            return None
        return _checked(value, next(a for a in args if a is not type(None)), where)
    if hint is Any:
        return value
    if isinstance(hint, type) and is_dataclass(hint):
        return _parse(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _WrongShape(f"{where} is {_json_kind(value)}, not a list")
        return tuple(_checked(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    expected = {dict: (dict,), str: (str,), int: (int,), float: (int, float)}[origin or hint]
    if not isinstance(value, expected) or isinstance(value, bool):
        raise _WrongShape(f"{where} is {_json_kind(value)}, not {_JSON_NAMES[origin or hint]}")
    return value


_JSON_NAMES = {dict: "an object", str: "a string", int: "a whole number", float: "a number"}


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def save(family: Family, folder: Path) -> None:
    write_json_atomic(Path(folder) / MANIFEST, asdict(family))


def record_stage(folder: Path, member: str, stage: str, **record: Any) -> None:
    """Reload family.json, set one member's record for `stage` and save it at once, so each finished model
    survives an interruption of the stage."""
    family = load(folder)
    found = family.member(member)
    if found is not None:
        save(family.with_member(found.with_stage(stage, **record)), folder)


def record_analysis(folder: Path, **entries: Any) -> None:
    """Reload family.json, add family-level results and save it."""
    save(load(folder).with_analysis(**entries), folder)


def record_command(folder: Path, stage: str, command: str) -> None:
    """Keep the command line that last ran `stage`, for the cards' reproducibility section."""
    family = load(folder)
    save(replace(family, commands={**family.commands, stage: command}), folder)
