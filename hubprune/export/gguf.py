"""One member as a GGUF file for llama.cpp, Ollama and LM Studio, written tensor by tensor from its safetensors.

Two routes to the metadata:
- from a GGUF source (the embedded default, or any .gguf the family was built from): every key of the source is
  copied (the whole tokenizer, the chat template, the hyperparameters llama.cpp reads), except the general.*
  naming keys, which describe the member, and `{arch}.feed_forward_length`, which is the member's width;
- from a safetensors or Hub source: the hyperparameters from config.json (gguf_model.py) and the tokenizer from
  tokenizer.json (gguf_vocab.py), refused where llama.cpp would run or tokenize the member differently.

Either way the tensors come from the member's safetensors, one at a time (the model is never built), converted to
llama.cpp's layout and written in the chosen type. The gguf package quantizes F16, BF16, Q8_0 and the legacy
4- and 5-bit types; the K-quants (Q4_K_M...) need llama.cpp's llama-quantize, run on the F16 file.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubprune.errors import ExportError
from hubprune.export.gguf_metadata import read_metadata
from hubprune.export.gguf_model import TensorNames, hyperparameters, layout, text_config
from hubprune.export.gguf_vocab import read_vocabulary
from hubprune.pruning.checkpoint import TensorInfo, open_checkpoint, read_tensor

WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
LOW_BIT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")
# written by llama.cpp's llama-quantize only (the gguf package reads them but cannot quantize to them)
NEEDS_LLAMA_QUANTIZE = (
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ3_XXS",
    "IQ3_S",
    "IQ4_NL",
    "IQ4_XS",
)
# the tensors llama.cpp's llama-quantize keeps at higher precision in 4- and 5-bit files: the embeddings (also the
# output layer when tied) and the output layer lose most from 4 bits; Q8_0 keeps them close to F16
KEPT_AT_Q8_0 = ("token_embd.weight", "output.weight")
NAMING_PREFIX = "general."
CHUNK_BYTES = 64 * 1024 * 1024  # of the member's tensor read at a time


def parse_types(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """'f16,q8_0' (any case, commas or repeats) -> ('F16', 'Q8_0'); an unknown or unwritable type is refused."""
    if text is None:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    types: list[str] = []
    for part in parts:
        for item in part.split(","):
            name = item.strip().upper()
            if not name:
                continue
            if name in NEEDS_LLAMA_QUANTIZE:
                raise ExportError(
                    f"GGUF type {name} is written by llama.cpp's llama-quantize, not by the gguf package: write F16 "
                    f"here, then run `{quantize_command('MEMBER', name)}`"
                )
            if name not in WRITABLE:
                raise ExportError(f"unknown GGUF type {item.strip()!r}: choose from {', '.join(WRITABLE)}")
            if name not in types:
                types.append(name)
    return tuple(types)


def file_name(member: str, kind: str) -> str:
    return f"{member}-{kind}.gguf"


def quantize_command(member: str, kind: str) -> str:
    """The llama.cpp command that makes a K-quant from the member's F16 file."""
    return f"llama-quantize {file_name(member, 'F16')} {file_name(member, kind)} {kind}"


@dataclass(frozen=True)
class Naming:
    """What the general.* keys say: the member, its base, and the licence when known."""

    member: str
    base: str
    base_repo: str | None = None  # the base's Hub repo id, when built from one
    licence: str | None = None


@dataclass(frozen=True)
class GgufFile:
    """One written file: its type, name, size, seconds to write, and the tensors kept in F16 because their rows do
    not fill whole quantization blocks (a width that is not a multiple of 32)."""

    kind: str
    file: str
    bytes: int
    seconds: float
    route: str  # "gguf-source" (metadata copied from the source GGUF) or "safetensors"
    unquantized: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "file": self.file,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
            "metadata_from": self.route,
            "kept_f16": list(self.unquantized),
        }


def write_member_gguf(
    folder: Path,
    kind: str,
    naming: Naming,
    source_gguf: Path | None = None,
    keys: dict[str, tuple[Any, Any, Any]] | None = None,
) -> GgufFile:
    """Write `folder`'s member as `<member>-<kind>.gguf` in `folder`, through a temporary file renamed when
    complete. `source_gguf`: the GGUF file the family was built from, whose metadata is copied. `keys`: the
    member's metadata_keys, when the caller writing several types has them already."""
    import gguf

    started = time.perf_counter()
    (kind,) = parse_types(kind)
    member = open_checkpoint(folder)
    names = TensorNames(member.config)
    plan = _tensor_plan(member.tensors.values(), names, kind)
    target = folder / file_name(naming.member, kind)
    tmp = target.with_name(f".{target.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), names.spec.arch)
    try:
        for key, (value, value_type, sub_type) in (keys or metadata_keys(folder, member.config, source_gguf)).items():
            writer.add_key_value(key, value, value_type, sub_type)
        _add_naming(writer, naming, kind)
        for entry in plan:
            writer.add_tensor_info(entry.name, entry.shape, np.dtype(np.float32), entry.nbytes, entry.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for entry in plan:
            writer.write_tensor_data(entry.data(names))
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    unquantized = tuple(e.name for e in plan if e.fell_back)
    route = "gguf-source" if source_gguf else "safetensors"
    return GgufFile(kind, target.name, target.stat().st_size, time.perf_counter() - started, route, unquantized)


@dataclass
class _PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    nbytes: int
    fell_back: bool  # F16 because its rows do not fill whole blocks of the file's type
    source: TensorInfo | None  # None for a tensor made here (rope_freqs)
    made: np.ndarray | None = None

    def data(self, names: TensorNames) -> np.ndarray:
        """The tensor as the file stores it, converted and quantized in blocks of rows of about CHUNK_BYTES (the
        embeddings of a 262k-token vocabulary are 671 MB in float32), or whole where rows move between heads."""
        info = self.source
        if info is None:
            return _quantized(self.made, self.qtype)
        rows = info.shape[0] if info.shape else 1
        step = max(1, CHUNK_BYTES // max(1, info.nbytes // rows))
        if names.reorders_rows(self.name) or step >= rows:
            return _quantized(names.convert(info.name, read_tensor(info).float().numpy())[1], self.qtype)
        stored = None
        for start in range(0, rows, step):
            part = read_tensor(info, start, min(rows, start + step)).float().numpy()
            block = _quantized(names.convert(info.name, part)[1], self.qtype)
            if stored is None:
                stored = np.empty((rows, *block.shape[1:]), dtype=block.dtype)
            stored[start : start + len(block)] = block
        return stored


def _quantized(values: np.ndarray, qtype: Any) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype)


def _tensor_plan(tensors: Iterable[TensorInfo], names: TensorNames, kind: str) -> list[_PlannedTensor]:
    """Every GGUF tensor with its type and size, decided from the shapes alone (nothing is read yet)."""
    planned = []
    for info in tensors:
        target = names.target(info.name)
        if target is not None:
            planned.append(_planned(target, tuple(info.shape), kind, info, None))
    for target, made in names.extra_tensors():
        planned.append(_planned(target, made.shape, kind, None, made))
    return planned


def _planned(target: str, shape: tuple[int, ...], kind: str, info: TensorInfo | None, made) -> _PlannedTensor:
    import gguf

    qtypes = gguf.GGMLQuantizationType
    wanted = kind
    if len(shape) == 1 or target == "rope_freqs.weight":
        wanted = "F32"  # norms and biases: llama.cpp reads them as F32 in every file type
    elif kind in LOW_BIT and target in KEPT_AT_Q8_0:
        wanted = "Q8_0"
    qtype = qtypes[wanted]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    fell_back = shape[-1] % block != 0
    if fell_back:
        qtype = qtypes.F16
    nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))
    return _PlannedTensor(target, shape, qtype, nbytes, fell_back, info, made)


def metadata_keys(folder: Path, config: dict[str, Any], source_gguf: Path | None) -> dict[str, tuple[Any, Any, Any]]:
    """Every key of the member's file but the general.* naming ones, typed: copied from `source_gguf` when given
    (its width set to the member's), else converted from the member's config.json and tokenizer.json."""
    import gguf

    if source_gguf is None:
        return _converted_keys(folder, config)
    keys = _source_keys(source_gguf)
    width = f"{layout(config).arch}.feed_forward_length"
    keys[width] = (hyperparameters(config)[width], gguf.GGUFValueType.UINT32, None)
    return keys


def _converted_keys(folder: Path, config: dict[str, Any]) -> dict[str, tuple[Any, Any, Any]]:
    """The hyperparameter and tokenizer keys of a member from a safetensors source (an empty array is left out:
    GGUF cannot type it)."""
    keys: dict[str, Any] = hyperparameters(config)
    keys |= read_vocabulary(folder, int(text_config(config)["vocab_size"])).key_values()
    return {key: _typed(value) for key, value in keys.items() if value != []}


def _typed(value: Any) -> tuple[Any, Any, Any]:
    import gguf

    types = gguf.GGUFValueType
    if isinstance(value, list):
        first = value[0] if value else ""
        sub = types.STRING if isinstance(first, str) else types.FLOAT32 if isinstance(first, float) else types.INT32
        return value, types.ARRAY, sub
    if isinstance(value, bool):
        return value, types.BOOL, None
    if isinstance(value, int):
        return value, types.UINT32, None
    if isinstance(value, float):
        return value, types.FLOAT32, None
    return value, types.STRING, None


def _source_keys(source: Path) -> dict[str, tuple[Any, Any, Any]]:
    """Every key of the source GGUF but its general.* naming keys (its licence is kept)."""
    import gguf

    keys = {}
    for name, (value, kind, element) in _source_metadata(source).items():
        if (name.startswith(NAMING_PREFIX) and name != "general.license") or (isinstance(value, list) and not value):
            continue
        keys[name] = (value, gguf.GGUFValueType(kind), None if element is None else gguf.GGUFValueType(element))
    return keys


@functools.lru_cache(maxsize=2)
def _source_metadata(source: Path) -> dict[str, Any]:
    """Read once for every member and type of an export (the tokenizer arrays are most of a small model's header)."""
    return read_metadata(source)


def _add_naming(writer, naming: Naming, kind: str) -> None:
    import gguf

    writer.add_type("model")
    writer.add_name(naming.member)
    writer.add_basename(naming.base)
    writer.add_file_type(_file_type(kind))
    if kind not in ("F32", "F16", "BF16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if naming.licence:
        writer.add_string("general.license", naming.licence)
    writer.add_uint32("general.base_model.count", 1)
    writer.add_string("general.base_model.0.name", naming.base)
    if naming.base_repo:
        writer.add_string("general.base_model.0.repo_url", f"https://huggingface.co/{naming.base_repo}")


def _file_type(kind: str) -> int:
    import gguf

    files = gguf.LlamaFileType
    return files.ALL_F32 if kind == "F32" else files[f"MOSTLY_{kind}"]


def check_convertible(folder: Path, config: dict[str, Any], copies_source_metadata: bool) -> None:
    """Refuse, before anything is written, a model whose architecture or tokenizer cannot be converted faithfully.
    `folder` holds its config and tokenizer files; with `copies_source_metadata` the tokenizer comes from the
    source GGUF and is not read here."""
    hyperparameters(config)  # the layout and its refusals
    if not copies_source_metadata:
        read_vocabulary(folder, int(text_config(config)["vocab_size"]))
