"""The key-value metadata of a GGUF file, read in one pass over its header.

The gguf package's GGUFReader builds a numpy view for every part of every field: on a tokenizer of 49,152 tokens and
48,900 merges that takes 20 s, longer than writing the member's tensors. The header format is simple (GGUF v2/v3,
little-endian): magic, version, tensor count, key count, then per key a string, a value type and the value, where
an array is its element type, a count and the elements."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from hubprune.errors import ExportError

# gguf.GGUFValueType: the struct format of each fixed-size type; 8 = string, 9 = array
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
Field = tuple[Any, int, int | None]  # value, value type, element type of an array


def read_metadata(path: Path) -> dict[str, Field]:
    """Every key of the GGUF file at `path` with its value and types, in file order."""
    with open(path, "rb") as handle:
        head = handle.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise ExportError(f"{Path(path).name} is not a GGUF file: give the .gguf file the family was built from")
        version, _tensors, count = struct.unpack("<IQQ", head[4:24])
        if version < 2:
            raise ExportError(f"{Path(path).name} is GGUF version {version}; only versions 2 and 3 are read")
        return _Cursor(handle).fields(count)


class _Cursor:
    """Reads the header in 1 MiB blocks, so that 100,000 small values cost one Python call each, not one read."""

    def __init__(self, handle):
        self.handle, self.buffer, self.at = handle, b"", 0

    def take(self, size: int) -> bytes:
        while len(self.buffer) - self.at < size:
            more = self.handle.read(max(1 << 20, size))
            if not more:
                raise ExportError("the GGUF file ends inside its metadata: it is truncated")
            self.buffer, self.at = self.buffer[self.at :] + more, 0
        part = self.buffer[self.at : self.at + size]
        self.at += size
        return part

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("Q")).decode("utf-8")

    def value(self, kind: int) -> Any:
        if kind == STRING:
            return self.string()
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])
        raise ExportError(f"the GGUF file has a value of unknown type {kind}: it is corrupt or newer than this reader")

    def fields(self, count: int) -> dict[str, Field]:
        found: dict[str, Field] = {}
        for _ in range(count):
            key, kind = self.string(), self.unpack("I")
            if kind != ARRAY:
                found[key] = (self.value(kind), kind, None)
                continue
            element, length = self.unpack("I"), self.unpack("Q")
            if element in SCALARS:  # one unpack for the whole array
                fmt = SCALARS[element]
                values = list(struct.unpack(f"<{length}{fmt}", self.take(length * struct.calcsize(fmt))))
            else:
                values = [self.value(element) for _ in range(length)]
            found[key] = (values, kind, element)
        return found


def metadata_text(path: Path) -> str:
    """Every string in the GGUF file's metadata, one per line: what a leak scan reads (the tensors are numbers)."""
    lines = []
    for key, (value, _kind, _element) in read_metadata(path).items():
        values = value if isinstance(value, list) else [value]
        lines.extend(f"{key}: {v}" for v in values if isinstance(v, str))
    return "\n".join(lines)
