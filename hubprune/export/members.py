"""The GGUF stage: every member of a family (or one member, or one pruned checkpoint) written as GGUF files of the
types asked for, recorded in the member's hubprune.json and in family.json; a file already written and recorded
is kept, so a stopped export resumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubprune import manifest, provenance
from hubprune.errors import ExportError
from hubprune.export.gguf import (
    GgufFile,
    Naming,
    check_convertible,
    file_name,
    metadata_keys,
    parse_types,
    write_member_gguf,
)
from hubprune.files import write_json_atomic
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.pruning.checkpoint import Checkpoint, open_checkpoint
from hubprune.pruning.gguf import EMBEDDED_DEFAULT_BASE, base_name, embedded_default, is_embedded_default, sha256_of

PROVENANCE = provenance.PROVENANCE


@dataclass(frozen=True)
class MemberFiles:
    """The GGUF files of one member: those of every type asked for, and which of them this call wrote."""

    member: str
    folder: Path
    files: tuple[GgufFile, ...]
    written: tuple[str, ...]  # the types written by this call (the others were already there)


def export_gguf(
    path: Path,
    types: Sequence[str] | str,
    *,
    source: Path | None = None,
    licence: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[MemberFiles]:
    """Write `types` for the family, member or pruned checkpoint at `path`. `source`: the .gguf file the family was
    built from, when it is not the embedded default (its metadata and tokenizer are then copied as they are).
    `licence`: the base's licence id for general.license (publish.licence.known_licence finds it as the cards do);
    from a GGUF source the source's own key is copied instead."""
    kinds = parse_types(types)
    if not kinds:
        raise ExportError("no GGUF type given: pass one or more of F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1")
    where = manifest.locate(Path(path))
    if where.kind == "family":
        family = manifest.load(Path(path))
        folders = [Path(path) / m.path for m in family.built_members()]
        if not folders:
            raise ExportError(f"{path} has no built member yet: run build-family first")
    elif where.kind in ("member", "checkpoint") and (Path(path) / PROVENANCE).is_file():
        folders = [Path(path)]
    else:
        raise ExportError(
            f"{path} is not a hubprune family, member or pruned checkpoint (no {PROVENANCE} or family.json)"
        )
    origin = _provenance(folders[0])["source"].get("origin")
    source_gguf = find_source_gguf(origin, source)
    if origin and origin.get("format") == "gguf" and source_gguf is None:
        message = (
            f"the source GGUF {origin.get('file')} is not on this machine: metadata converted from the members' "
            "tokenizer.json and config.json (pass --source FILE.gguf to copy the source's own)"
        )
        report(on_progress, Progress("gguf", message, status="warning"))
    for folder in folders:  # refuse an architecture or tokenizer before the first file is written
        check_convertible(folder, open_checkpoint(folder).config, source_gguf is not None)
    return [_export_member(folder, kinds, source_gguf, licence, where, on_progress) for folder in folders]


def source_gguf_of(checkpoint: Checkpoint) -> Path | None:
    """The .gguf file a source checkpoint was dequantized from, or None."""
    origin = checkpoint.origin or {}
    return Path(checkpoint.source) if origin.get("format") == "gguf" else None


def check_gguf_source(checkpoint: Checkpoint) -> None:
    """Refuse, before pruning, a source whose members could not be written as GGUF files faithfully."""
    check_convertible(checkpoint.folder, checkpoint.config, source_gguf_of(checkpoint) is not None)


def find_source_gguf(origin: dict[str, Any] | None, given: Path | None) -> Path | None:
    """The GGUF file a member was built from, when it is here: `given` (checked by sha256), else the embedded
    default's file; None for a member of a safetensors or Hub source."""
    if not origin or origin.get("format") != "gguf":
        if given is not None:
            raise ExportError(
                "--source names the .gguf file a family was built from, and this one was not built from a GGUF file"
            )
        return None
    candidates = [Path(given)] if given is not None else []
    if given is None and is_embedded_default(origin):
        candidates.append(embedded_default())
    for candidate in candidates:
        if not candidate.is_file():
            raise ExportError(f"--source {candidate} is not a file: give the .gguf file the family was built from")
        if sha256_of(candidate) == origin.get("sha256"):
            return candidate
        if given is not None:
            raise ExportError(
                f"{candidate.name} is not the file the members were built from ({origin.get('file')}, sha256 "
                f"{str(origin.get('sha256'))[:12]}...): give that file"
            )
    return None


def _export_member(
    folder: Path,
    kinds: tuple[str, ...],
    source_gguf: Path | None,
    licence: str | None,
    where: manifest.Location,
    on_progress: ProgressCallback | None,
) -> MemberFiles:
    written_by = _provenance(folder)
    recorded: dict[str, dict[str, Any]] = dict(written_by.get("gguf") or {})
    naming = _naming(folder, written_by, None if source_gguf else licence)
    files, written, keys = [], [], None
    for kind in kinds:
        previous = recorded.get(kind)
        target = folder / file_name(naming.member, kind)
        if previous and target.is_file() and target.stat().st_size == previous["bytes"]:
            files.append(_from_record(previous))
            report(on_progress, Progress("gguf", f"{target.name} already written", item=naming.member, status="reused"))
            continue
        report(on_progress, Progress("gguf", f"writing {target.name}", item=naming.member, status="start"))
        keys = keys or metadata_keys(folder, open_checkpoint(folder).config, source_gguf)  # read once a member
        made = write_member_gguf(folder, kind, naming, source_gguf, keys)
        files.append(made)
        written.append(kind)
        recorded[kind] = made.to_dict()
        write_json_atomic(folder / PROVENANCE, {**written_by, "gguf": recorded})
        report(on_progress, Progress("gguf", _written_line(made), item=naming.member, status="done"))
    family_dir = where.family_dir
    if family_dir is not None:
        manifest.record_stage(family_dir, folder.name, "gguf", status="done", files=dict(sorted(recorded.items())))
    return MemberFiles(naming.member, folder, tuple(files), tuple(written))


def _written_line(made: GgufFile) -> str:
    line = f"wrote {made.file} ({made.bytes / 1e6:.1f} MB, {made.seconds:.1f} s)"
    if made.unquantized:
        line += (
            f"; {len(made.unquantized)} tensors kept in F16: their rows are not a multiple of 32 "
            "(build with --multiple-of 32 to quantize them all)"
        )
    return line


def _from_record(record: dict[str, Any]) -> GgufFile:
    return GgufFile(
        record["type"],
        record["file"],
        record["bytes"],
        record["seconds"],
        record["metadata_from"],
        tuple(record.get("kept_f16") or ()),
    )


def _naming(folder: Path, written_by: dict[str, Any], licence: str | None) -> Naming:
    """The general.* keys: the member, its base by name and Hub repo (never a local path), its licence."""
    source = written_by["source"]
    origin = source.get("origin") or {}
    identity = str(source.get("id", ""))
    if origin.get("format") == "gguf":
        base = base_name(Path(identity))
        repo = EMBEDDED_DEFAULT_BASE if is_embedded_default(origin) else None
    else:
        base = identity.rstrip("/").split("/")[-1]
        repo = identity if source.get("revision") else None  # a Hub source records the commit it was read at
    return Naming(member=folder.name, base=base, base_repo=repo, licence=licence)


def _provenance(folder: Path) -> dict[str, Any]:
    """The member's hubprune.json as it stands (the typed view's raw dict: the gguf records are written back)."""
    found = provenance.read(folder)
    if found is None:
        raise ExportError(f"{folder} has no {PROVENANCE}: give a member hubprune wrote")
    return found.raw
