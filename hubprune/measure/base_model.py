"""Find a family's base model on this machine, for the stages that measure it beside its members.

Looked for without the network, in this order: the folder the family was built from, the dequantized GGUF in
hubprune's cache (re-created from the GGUF file if only that is left), the local source folder, the Hub cache
at the recorded revision. What is found is checked against family.json's parameter count.
"""

from __future__ import annotations

from pathlib import Path

from hubprune import manifest
from hubprune.errors import HubpruneError
from hubprune.pruning.checkpoint import is_hub_id, open_checkpoint
from hubprune.pruning.gguf import GGUF_PROVENANCE, base_name, cache_root, open_gguf
from hubprune.pruning.source import HUB_PATTERNS

BASE_RESULTS = "base-results"  # a family's folder for its base model's results (eval.json, profile.json)


def base_label(family: manifest.Family) -> str:
    source = family.source
    if source.origin and source.origin.get("format") == "gguf":
        return base_name(Path(source.id))
    return source.id.rstrip("/").split("/")[-1]


def locate_base(family: manifest.Family) -> tuple[Path | None, str | None]:
    """A local folder holding the family's base checkpoint, checked against family.json, or why there is none.

    Looked for without the network: the dequantized GGUF in hubprune's cache (re-created from the GGUF file if
    only that is left), the local source folder, or the Hub cache at the recorded revision.
    """
    source = family.source
    path = Path(source.id).expanduser()
    folder: Path | None = None
    if source.folder and (Path(source.folder) / "config.json").exists():  # where the build read it from
        folder = Path(source.folder)
    elif source.origin and source.origin.get("format") == "gguf":
        cached = cache_root() / "gguf" / str(source.origin.get("sha256"))
        if (cached / GGUF_PROVENANCE).exists():
            folder = cached
        elif path.is_file():
            checkpoint = open_gguf(path)
            if (checkpoint.origin or {}).get("sha256") != source.origin.get("sha256"):
                return None, f"the GGUF file {path} has changed since the family was built (sha256 differs)"
            folder = checkpoint.folder
        else:
            return None, f"neither the GGUF file {path} nor its dequantized copy in {cached.parent} exists any more"
    elif path.is_dir():
        folder = path
    else:
        folder = hub_cache_folder(source.id, source.revision)
        if folder is None:
            return None, (
                f"the base {source.id} is not on this machine (not a folder, not in the Hub cache at revision "
                f"{source.revision}): download it, e.g. `hf download {source.id} --revision {source.revision}`"
            )
    try:
        total = sum(t.numel for t in open_checkpoint(folder).tensors.values())
    except HubpruneError as exc:
        return None, f"the base checkpoint at {folder} cannot be read ({exc})"
    if total != source.params_total:
        return None, (
            f"the base checkpoint at {folder} has {total} parameters, family.json records {source.params_total}: "
            "it changed since the family was built"
        )
    return folder, None


def hub_cache_folder(repo_id: str, revision: str | None) -> Path | None:
    if not is_hub_id(repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download

        found = snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_PATTERNS), local_files_only=True)
    except Exception:  # huggingface_hub raises several types for "not cached"; any means: no local copy
        return None
    return Path(found)
