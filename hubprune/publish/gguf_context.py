"""The cards' GGUF sections: each member's files (as its hubprune.json records them) and how to run them with
llama.cpp and Ollama; the family card's list of every member's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubprune import provenance
from hubprune.export.gguf import WRITABLE, quantize_command
from hubprune.publish.formatting import bytes_text

# which file the run commands name: the first of these that was written (the most compact that keeps quality)
PREFERRED = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16", "BF16", "F32")


def recorded_files(folder: Path | None, written: provenance.MemberProvenance | None) -> list[dict[str, Any]]:
    """The GGUF files recorded in a member's hubprune.json (`written`) that are still beside it, in WRITABLE
    order."""
    if folder is None or written is None:
        return []
    present = [r for r in (written.raw.get("gguf") or {}).values() if (folder / r["file"]).is_file()]
    return sorted(present, key=lambda r: WRITABLE.index(r["type"]))


def member_gguf(
    folder: Path | None, written: provenance.MemberProvenance | None, repo_id: str, width: int
) -> dict[str, Any] | None:
    """A member card's "Use with llama.cpp / Ollama" section, or None when no GGUF file was written."""
    files = recorded_files(folder, written)
    if not files:
        return None
    kinds = [f["type"] for f in files]
    run = next(k for k in PREFERRED if k in kinds)
    kept = sorted({len(f["kept_f16"]) for f in files if f["kept_f16"]})
    note = None
    if kept:
        note = (
            f"In the quantized files, the {kept[-1]} tensors whose rows are {width} long (ffn_down) are F16: "
            f"{width} is not a multiple of the 32-value quantization block (llama.cpp's converter does the same)."
        )
    return {
        "files": [{"file": f["file"], "type": f["type"], "size": bytes_text(f["bytes"])} for f in files],
        "llama_cpp": f"llama-cli -hf {repo_id}:{run}",
        "ollama": f"ollama run hf.co/{repo_id}:{run}",
        "kept_note": note,
        "k_quant": quantize_command(folder.name, "Q4_K_M") if "F16" in kinds else None,
    }


def family_gguf(members: list[Any]) -> list[dict[str, str]]:
    """The family card's list: each member with GGUF files, and its files with sizes."""
    rows = []
    for member in members:
        files = recorded_files(member.folder, provenance.read(member.folder) if member.folder else None)
        if files:
            listed = ", ".join(f"`{f['file']}` ({bytes_text(f['bytes'])})" for f in files)
            rows.append({"member": member.name, "files": listed})
    return rows
