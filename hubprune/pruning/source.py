"""Turn the user's SOURCE argument into a local Checkpoint: a folder as it is, or a Hub repo downloaded.

Only the files a member needs are downloaded (config, safetensors, tokenizer and the few others listed in
checkpoint.COPIED_FILE_PATTERNS), at one resolved commit so the provenance names exactly what was pruned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hubprune.errors import SourceError
from hubprune.pruning.checkpoint import COPIED_FILE_PATTERNS, INDEX_FILE, Checkpoint, is_hub_id, open_checkpoint
from hubprune.pruning.gguf import (
    DEFAULT_PACKAGE,
    DEFAULT_PACKAGE_VERSION,
    embedded_default,
    is_embedded_default,
    open_gguf,
)

# README.md is fetched for the base's licence (the card stage reads it there) and never copied into a member.
HUB_PATTERNS = ("config.json", "*.safetensors", INDEX_FILE, "README.md", *COPIED_FILE_PATTERNS)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def open_source(source: str | None, *, revision: str | None = None, cache_dir: Path | None = None) -> Checkpoint:
    """A Checkpoint for a local folder, a .gguf file, a Hub repo id ('owner/name', optionally at a revision),
    or, with no source, the embedded default model.

    cache_dir: where Hub downloads (huggingface_hub's cache) or dequantized GGUFs (hubprune's cache) go.
    """
    if source is None:
        source = str(embedded_default())
    path = Path(source).expanduser()
    if path.exists():
        if revision is not None:
            raise SourceError(f"`revision` {revision!r} applies to Hub repositories only; {source} is a local path")
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return open_gguf(path, cache_dir)
            raise SourceError(
                f"{source} is a file: give a checkpoint folder (config.json plus safetensors) or a .gguf file"
            )
        return open_checkpoint(path, source=str(path))
    if is_hub_id(source):
        return _download(source, revision, cache_dir)
    raise SourceError(
        f"{source!r} is neither an existing folder nor a Hub repo id of the form owner/name: check the spelling"
    )


def _download(repo_id: str, revision: str | None, cache_dir: Path | None) -> Checkpoint:
    # Imported here so that local-only use never pays for the Hub client's import.
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        info = HfApi().model_info(repo_id, revision=revision)
        files = [s.rfilename for s in info.siblings or []]
        if not any(f.endswith(".safetensors") for f in files):
            if any(f.endswith(PICKLE_SUFFIXES) for f in files):
                raise SourceError(
                    f"{where} has only pickled weights (*.bin), which hubprune refuses because unpickling can run "
                    "arbitrary code: use a repo or revision with safetensors weights"
                )
            raise SourceError(f"{where} has no safetensors weights: choose a model repository that has them")
        # A gated repo shows its info to anyone but its files only to those granted access: ask for one file's
        # metadata first, so that a refusal comes before the download starts (and its progress bar).
        probe = "config.json" if "config.json" in files else next(f for f in files if f.endswith(".safetensors"))
        get_hf_file_metadata(hf_hub_url(repo_id, probe, revision=info.sha))
        folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=list(HUB_PATTERNS), cache_dir=cache_dir)
    except GatedRepoError:
        raise SourceError(
            f"{where} is gated: accept its licence on the Hub, then log in (hf auth login) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"Hub repo {repo_id} was not found (or is private): check the id, or log in / set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise SourceError(f"revision {revision!r} does not exist in {repo_id}: check `revision`") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "no response"
        raise SourceError(f"the Hub answered HTTP {status} for {where}: try again later") from None
    except _transport_errors() as exc:  # connection refused, DNS failure, offline mode
        raise SourceError(
            f"cannot reach the Hub for {where} ({type(exc).__name__}): check the network, or give a local folder"
        ) from None
    return open_checkpoint(Path(folder), source=repo_id, revision=info.sha)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """OSError plus the HTTP client's own network errors, which are not OSErrors."""
    errors: list[type[BaseException]] = [OSError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


def source_identity(checkpoint: Checkpoint) -> dict[str, Any]:
    """The source as a member publishes it: by what it is, never by where it lies on this machine.

    A Hub repo: its id (the commit is the checkpoint's revision). A GGUF file: its file name (its sha256 is in
    the origin record), and the package that carried it for the embedded default. A local folder: its name and
    a sha256 over its config.json and its tensor layout as the safetensors headers give it (name, dtype, shape,
    file name and offset of every tensor), which tells two folders of one name apart without reading weights.
    """
    if checkpoint.origin and checkpoint.origin.get("format") == "gguf":
        found: dict[str, Any] = {"id": Path(checkpoint.source).name}
        if is_embedded_default(checkpoint.origin):
            found["package"] = f"{DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}"
        return found
    if checkpoint.revision is not None or not Path(checkpoint.source).expanduser().exists():
        return {"id": checkpoint.source}  # a Hub repo id
    digest = hashlib.sha256((checkpoint.folder / "config.json").read_bytes())
    for info in checkpoint.tensors.values():  # read from the headers when the checkpoint was opened
        digest.update(f"{info.name}|{info.dtype}|{info.shape}|{info.file.name}|{info.offset}\n".encode())
    return {"id": checkpoint.folder.resolve().name, "digest": f"sha256:{digest.hexdigest()}"}
