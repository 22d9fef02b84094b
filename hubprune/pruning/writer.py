"""Streaming safetensors writer: every tensor's shape is known before the first byte is written, so each
shard's header is written first and the data follows in order, one tensor at a time, never held whole.

Output follows the safetensors format (8-byte little-endian header length, JSON header padded to 8 bytes,
then the data) with the metadata {"format": "pt"} that transformers reads, sharded with an index in the
layout transformers' save_pretrained uses when the weights exceed the shard size.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from hubprune.errors import OutputError
from hubprune.pruning.checkpoint import DTYPES, INDEX_FILE, SINGLE_FILE, read_header

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
COPY_CHUNK = 64 * 1024**2
IOV_MAX = 1024  # Linux's limit on ranges per writev call


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = DTYPES[self.dtype][0]
        for dim in self.shape:
            count *= dim
        return count


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most max_shard_bytes (a larger tensor gets a shard alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _header_bytes(shard: list[TensorSpec]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in shard:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the safetensors library does
    return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
    """Writes a known list of tensors, in that order, into one folder's safetensors shards."""

    def __init__(self, folder: Path, specs: list[TensorSpec], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.folder = Path(folder)
        self.shards = plan_shards(specs, max_shard_bytes)
        self.files = shard_names(len(self.shards))
        self._order = [(i, spec) for i, shard in enumerate(self.shards) for spec in shard]
        self._next = 0
        self._fd: int | None = None
        self._open_shard = -1
        self._current, self._left = "", 0  # the tensor being written and the bytes it still needs

    def begin(self, name: str) -> int:
        """Start the next planned tensor (its bytes follow through append); returns its size in bytes."""
        self._check_previous_complete()
        if self._next >= len(self._order) or self._order[self._next][1].name != name:
            expected = self._order[self._next][1].name if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"writer expected tensor {expected!r} next, got {name!r}")
        shard_index, spec = self._order[self._next]
        if shard_index != self._open_shard:
            self._close_fd()
            path = self.folder / self.files[shard_index]
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _write_all(self._fd, _header_bytes(self.shards[shard_index]))
            self._open_shard = shard_index
        self._next += 1
        self._current, self._left = name, spec.nbytes
        return spec.nbytes

    def append(self, data: memoryview) -> None:
        """Write the next bytes of the current tensor (little-endian, C order)."""
        if data.nbytes > self._left:
            raise RuntimeError(f"tensor {self._current!r}: {data.nbytes} more bytes than planned")
        assert self._fd is not None
        _write_all(self._fd, data.cast("B"))
        self._left -= data.nbytes

    def append_many(self, views: list[memoryview]) -> None:
        """Write several byte ranges of the current tensor, in order, with as few system calls as possible."""
        nbytes = sum(v.nbytes for v in views)
        if nbytes > self._left:
            raise RuntimeError(f"tensor {self._current!r}: {nbytes} more bytes than planned")
        assert self._fd is not None
        for batch_start in range(0, len(views), IOV_MAX):
            batch = views[batch_start : batch_start + IOV_MAX]
            written = os.writev(self._fd, batch)
            for view in batch:  # a short write (rare on files) finishes one range at a time
                if written >= view.nbytes:
                    written -= view.nbytes
                    continue
                _write_all(self._fd, view[written:])
                written = 0
        self._left -= nbytes

    def copy(self, name: str, src_fd: int, src_offset: int) -> None:
        """Copy the next tensor's bytes straight from another file: in the kernel where it can, else in chunks."""
        nbytes = self.begin(name)
        assert self._fd is not None
        _copy_range(src_fd, src_offset, self._fd, nbytes)
        self._left = 0

    def _check_previous_complete(self) -> None:
        if self._left:
            raise RuntimeError(f"tensor {self._current!r} is {self._left} bytes short of its planned size")

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Finish the last shard and write the index when there is more than one shard."""
        self._check_previous_complete()
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        self._close_fd()
        if len(self.files) > 1:
            weight_map = {spec.name: self.files[i] for i, spec in self._order}
            total = sum(spec.nbytes for _, spec in self._order)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        self._close_fd()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_range(src_fd: int, src_offset: int, dst_fd: int, nbytes: int) -> None:
    done = 0
    try:
        while done < nbytes:
            copied = os.copy_file_range(src_fd, dst_fd, nbytes - done, src_offset + done)
            if copied == 0:
                raise OutputError(f"source ended early while copying {nbytes} bytes: the source file is truncated")
            done += copied
        return
    except OSError as exc:
        if isinstance(exc, OutputError) or exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while done < nbytes:  # file systems without copy_file_range: plain reads and writes in bounded chunks
        chunk = os.pread(src_fd, min(COPY_CHUNK, nbytes - done), src_offset + done)
        if not chunk:
            raise OutputError(f"source ended early while copying {nbytes} bytes: the source file is truncated")
        _write_all(dst_fd, chunk)
        done += len(chunk)


def verify(folder: Path, specs: list[TensorSpec]) -> None:
    """Re-read every written shard's header and check each tensor's dtype, shape and the file sizes."""
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    index = folder / INDEX_FILE
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [SINGLE_FILE]
    for name in files:
        tensors, metadata = read_header(folder / name)
        if metadata.get("format") != "pt":
            raise OutputError(f"verification failed: {folder / name} lacks the metadata format=pt")
        data_end = max((t.offset + t.nbytes for t in tensors.values()), default=0)
        if tensors and (folder / name).stat().st_size != data_end:
            raise OutputError(f"verification failed: {folder / name} is not the size its header describes")
        found.update({t.name: (t.dtype, t.shape) for t in tensors.values()})
    wanted = {s.name: (s.dtype, s.shape) for s in specs}
    if found != wanted:
        wrong = sorted(n for n in wanted.keys() | found.keys() if found.get(n) != wanted.get(n))
        raise OutputError(f"verification of {folder} failed: tensors {wrong[:5]} differ from the plan")
