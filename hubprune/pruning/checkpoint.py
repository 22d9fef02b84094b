"""Read-only view of a source checkpoint: its config, its tensor layout, one tensor at a time.

The safetensors header is parsed here rather than through safe_open because the streaming pass needs each
tensor's absolute byte range: untouched tensors are copied file-to-file by the kernel, never through Python
memory, and the tensors that are sliced are read into one buffer each. Nothing is memory-mapped, so the
process's resident memory stays at one layer's MLP whatever the model's size.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubprune.errors import CheckpointError

# safetensors dtype name -> (bytes per element, torch dtype)
DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "F64": (8, torch.float64),
    "F32": (4, torch.float32),
    "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16),
    "I64": (8, torch.int64),
    "I32": (4, torch.int32),
    "I16": (2, torch.int16),
    "I8": (1, torch.int8),
    "U8": (1, torch.uint8),
    "BOOL": (1, torch.bool),
    "F8_E4M3": (1, torch.float8_e4m3fn),
    "F8_E5M2": (1, torch.float8_e5m2),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

# Files a member needs besides weights and config (DESIGN.md): tokenizer, generation settings, chat template,
# processor settings of multimodal models, and the licence files the base's terms require to travel with it.
# Never the base's README.md, pickled weights, original/ or GGUF files.
COPIED_FILE_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "LICENSE*",
    "NOTICE*",
    "USE_POLICY*",
)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, length, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors file's header: its tensors in file order, and its metadata.

    Raises CheckpointError for a truncated or corrupt file, naming the file and what is wrong with it.
    """
    fix = f"re-download or re-create {path.name}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes, not even a safetensors header): {fix}")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{path} is not a valid safetensors file (header length {header_len} for a {size}-byte file): {fix}"
                )
            raw = handle.read(header_len)
    except OSError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not JSON): {fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object): {fix}")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        tensors.append(_tensor_info(path, name, entry, data_start, fix))
    tensors.sort(key=lambda t: t.offset)
    data_end = max((t.offset + t.nbytes for t in tensors), default=data_start)
    if data_end > size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {data_end - data_start} bytes of tensor data but the file holds "
            f"{size - data_start}: {fix}"
        )
    return {t.name: t for t in tensors}, metadata


def _tensor_info(path: Path, name: str, entry: Any, data_start: int, fix: str) -> TensorInfo:
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} has a corrupt header entry for tensor {name!r}: {fix}") from None
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, which hubprune cannot handle")
    info = TensorInfo(name, dtype, shape, path, data_start + begin, end - begin)
    if any((not isinstance(d, int)) or d < 0 for d in shape) or info.numel * DTYPES[dtype][0] != end - begin:
        raise CheckpointError(
            f"{path} has a corrupt header: tensor {name!r} of shape {list(shape)} {dtype} does not fit its byte range "
            f"[{begin}, {end}): {fix}"
        )
    return info


def read_tensor(info: TensorInfo, start_row: int = 0, stop_row: int | None = None) -> torch.Tensor:
    """Read one tensor, or rows [start_row, stop_row) of it, into a buffer of its own (no memory map)."""
    torch_dtype = DTYPES[info.dtype][1]
    rows = info.shape[0] if info.shape else 1
    stop_row = rows if stop_row is None else stop_row
    shape = (stop_row - start_row, *info.shape[1:]) if info.shape else ()
    row_bytes = info.nbytes // rows if rows else 0
    nbytes, offset = (stop_row - start_row) * row_bytes, info.offset + start_row * row_bytes
    if nbytes == 0:
        return torch.empty(shape, dtype=torch_dtype)
    buffer = torch.empty(nbytes, dtype=torch.uint8)  # uninitialised: no time spent zeroing it first
    view = memoryview(buffer.numpy())
    fd = os.open(info.file, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise CheckpointError(f"{info.file} ended while reading tensor {info.name!r}: the file is truncated")
            done += got
    finally:
        os.close(fd)
    return buffer.view(torch_dtype).reshape(shape)


@dataclass(frozen=True)
class Checkpoint:
    """A local checkpoint folder with safetensors weights, ready to stream from."""

    folder: Path
    source: str  # what the user named: a local path or a Hub repo id
    revision: str | None  # resolved commit sha for Hub sources
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]  # every tensor, in (file, offset) order
    copied_files: tuple[str, ...]  # names of the non-weight files a member carries over
    name: str | None = None  # the base model's name when the source path does not say it (GGUF files)
    origin: dict[str, Any] | None = None  # how the weights were obtained when not as-is (GGUF dequantization)

    @property
    def base_name(self) -> str:
        return self.name or self.source.rstrip("/").split("/")[-1] or self.folder.name

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def open_checkpoint(
    folder: Path,
    *,
    source: str | None = None,
    revision: str | None = None,
    name: str | None = None,
    origin: dict[str, Any] | None = None,
) -> Checkpoint:
    """Open a local folder holding config.json and safetensors weights (one file, or shards with an index)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder: give a checkpoint folder holding config.json and safetensors")
    config = _read_config(folder)
    files = _weight_files(folder)
    tensors: dict[str, TensorInfo] = {}
    for path in files:
        found, _ = read_header(path)
        for tensor_name in found:
            if tensor_name in tensors:
                raise CheckpointError(
                    f"tensor {tensor_name!r} appears in both {tensors[tensor_name].file.name} and {path.name}"
                )
        tensors.update(found)
    index = folder / INDEX_FILE
    if index.exists():
        _check_index_matches(index, tensors)
    return Checkpoint(
        folder=folder,
        source=source or str(folder),
        revision=revision,
        config=config,
        tensors=tensors,
        copied_files=tuple(sorted(_copied_files(folder))),
        name=name,
        origin=origin,
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(
            f"{folder} has no config.json: give a Hugging Face checkpoint folder (config.json plus safetensors weights)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): restore the original config.json") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object: restore the original config.json")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "unknown")
        raise CheckpointError(
            f"{folder} is a quantized checkpoint ({method}): prune the unquantized model, then quantize the members"
        )
    return config


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = _read_index(index)
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise CheckpointError(
                f"{index.name} names shard(s) missing from {folder}: {', '.join(missing)}; download every shard again"
            )
        return [folder / s for s in shards]
    if (folder / SINGLE_FILE).exists():
        return [folder / SINGLE_FILE]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise CheckpointError(
            f"{folder} holds only pickled weights (*.bin/*.pt), which hubprune refuses because unpickling can run "
            "arbitrary code: convert them to safetensors first (load with transformers and save_pretrained)"
        )
    raise CheckpointError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}: give a folder with safetensors weights")


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map): download it again") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has an empty or invalid weight_map: download it again")
    return {str(k): str(v) for k, v in weight_map.items()}


def _check_index_matches(index: Path, tensors: dict[str, TensorInfo]) -> None:
    for name, shard in _read_index(index).items():
        info = tensors.get(name)
        if info is None or info.file.name != shard:
            raise CheckpointError(
                f"{index.name} says tensor {name!r} is in {shard}, but that shard does not hold it: the checkpoint is "
                "inconsistent; download it again"
            )


def _copied_files(folder: Path) -> list[str]:
    found: set[str] = set()
    for pattern in COPIED_FILE_PATTERNS:
        found.update(p.name for p in folder.glob(pattern) if p.is_file())
    return list(found)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(text: str) -> bool:
    """True for 'owner/name' strings that are not a path to anything on this machine."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()
