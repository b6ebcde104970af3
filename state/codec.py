"""Files of a snapshot, written and read with their sha256 — never a pickle.

Each writer hashes the bytes while it writes them (no second pass over the file), fsyncs the
file and returns a :class:`FileEntry` for the manifest. Each reader reads the whole file once into
memory, checks its size and sha256 against the manifest, and only then decodes it:

- numpy arrays: ``.npy`` (format 1.0/2.0); the header is parsed with :mod:`numpy.lib.format` and
  object dtypes are refused, so nothing is ever unpickled; the array is a zero-copy view of the
  (writable) read buffer;
- Arrow tables: Parquet;
- torch tensors: ``torch.save`` / ``torch.load(weights_only=True)``;
- JSON: UTF-8 text.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> entry = write_array(d / "w.npy", np.arange(4, dtype=np.float64))
>>> entry.bytes, read_array(d / "w.npy", entry).tolist()
(160, [0.0, 1.0, 2.0, 3.0])
>>> read_array(d / "w.npy", FileEntry("0" * 64, entry.bytes))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pipeline.errors.SnapshotError: checksum mismatch in .../w.npy: expected sha256 0000000000…, found ...
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import SnapshotError

if TYPE_CHECKING:  # imported where Parquet is read or written: listing snapshots needs no pyarrow
    import pyarrow as pa

__all__ = [
    "FileEntry",
    "HashingFile",
    "dumps_json",
    "fsync_dir",
    "hash_file",
    "read_array",
    "read_bytes",
    "read_table",
    "read_tensor",
    "write_array",
    "write_bytes",
    "write_json",
    "write_table",
    "write_tensor",
]

_CHUNK = 8 << 20  # bytes per write/hash step: big enough to amortise calls, small enough for the cache
PARQUET_COMPRESSION = "snappy"


@dataclass(frozen=True)
class FileEntry:
    """What the manifest records about one file."""

    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


@functools.cache
def _hasher() -> ThreadPoolExecutor:
    """One thread that hashes while the caller's thread does the I/O (both release the GIL)."""
    return ThreadPoolExecutor(1, thread_name_prefix="sha256")


class HashingFile:
    """A new file, written append-only, that hashes what goes into it and is fsynced by :meth:`finish`.

    Large writes are hashed on the hashing thread while this thread writes the same bytes; a
    write returns only when both are done, so callers (pyarrow, torch) may reuse their buffers.
    """

    def __init__(self, path: Path):
        self._fh = open(path, "xb", buffering=0)  # closed by finish() or abort()
        self._digest = hashlib.sha256()
        self._size = 0

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        hashed = _hasher().submit(self._digest.update, view) if len(view) >= 1 << 20 else None
        try:
            if hashed is None:
                self._digest.update(view)
            for start in range(0, len(view), _CHUNK):
                chunk = view[start : start + _CHUNK]
                written = 0
                while written < len(chunk):  # raw writes may be short
                    written += self._fh.write(chunk[written:])
        finally:
            if hashed is not None:
                hashed.result()
        self._size += len(view)
        return len(view)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Nothing is buffered here; durability comes from :meth:`finish`."""

    def finish(self) -> FileEntry:
        """fsync and close; the entry for the manifest."""
        try:
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()
        return FileEntry(self._digest.hexdigest(), self._size)

    def abort(self) -> None:
        self._fh.close()


def _write_with(path: Path, produce) -> FileEntry:
    out = HashingFile(path)
    try:
        produce(out)
    except BaseException:
        out.abort()
        raise
    return out.finish()


def write_bytes(path: Path, parts: Iterable[Any]) -> FileEntry:
    """Write buffers to a new file, hashing them on the way (in parallel with the write), then fsync it."""
    return _write_with(path, lambda out: [out.write(part) for part in parts])


def write_array(path: Path, array: np.ndarray) -> FileEntry:
    """An ``.npy`` file; refuses object arrays (they would need pickle to load)."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise SnapshotError(
            f"cannot save {path.name}: dtype {array.dtype} holds Python objects (would need pickle)"
        )
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    fields = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(header, fields)
    except ValueError:  # header too long for format 1.0 (huge structured dtypes)
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, fields)
    data = array.reshape(-1).view(np.uint8) if array.size else b""
    return write_bytes(path, [header.getvalue(), data])


def write_table(path: Path, table: pa.Table) -> FileEntry:
    """A Parquet file (Arrow schema kept in its metadata, so types round-trip exactly)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Dictionary encoding pays for repeated strings; for numbers it mostly costs time (3x slower writes).
    strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    # streamed straight into the file: encoding overlaps the writes and no second copy is held
    return _write_with(
        path, lambda out: pq.write_table(table, out, compression=PARQUET_COMPRESSION, use_dictionary=strings)
    )


def write_tensor(path: Path, tensor: Any) -> FileEntry:
    """A ``torch.save`` file of one tensor (read back with ``weights_only=True``)."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise SnapshotError(f"cannot save {path.name}: expected a torch.Tensor, got {type(tensor).__name__}")
    return _write_with(path, lambda out: torch.save(tensor.detach().cpu(), out))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps_json(obj: Any) -> bytes:
    """Canonical JSON (sorted keys) used for the manifest and its checksum."""
    return json.dumps(obj, sort_keys=True, indent=1, default=_json_default).encode("utf-8")


def write_json(path: Path, obj: Any) -> FileEntry:
    return write_bytes(path, [dumps_json(obj)])


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ reading


def read_bytes(path: Path, expected: FileEntry | None = None) -> np.ndarray:
    """The whole file as a writable uint8 array, verified against ``expected`` (size, then sha256).

    Chunk k is hashed on the hashing thread while chunk k+1 is read.
    """
    digest = hashlib.sha256()
    try:
        size = os.path.getsize(path)
        if expected is not None and size != expected.bytes:
            raise SnapshotError(
                f"size mismatch in {path}: expected {expected.bytes} bytes, found {size} (truncated?)"
            )
        buf = np.empty(size, dtype=np.uint8)  # no zero-fill: every byte is read over
        view = memoryview(buf)
        hashed = None
        with open(path, "rb", buffering=0) as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)  # queue the whole file's reads now
            done = 0
            while done < size:
                n = fh.readinto(view[done : done + _CHUNK])
                if not n:
                    raise SnapshotError(f"unexpected end of {path} after {done} of {size} bytes")
                if hashed is not None:
                    hashed.result()
                hashed = _hasher().submit(digest.update, view[done : done + n])
                done += n
        if hashed is not None:
            hashed.result()
    except FileNotFoundError:
        raise SnapshotError(f"missing file {path}") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc}") from exc
    if expected is not None and (found := digest.hexdigest()) != expected.sha256:
        raise SnapshotError(
            f"checksum mismatch in {path}: expected sha256 {expected.sha256[:10]}…, found {found[:10]}…"
        )
    return buf


def hash_file(path: Path) -> FileEntry:
    """sha256 and size of a file, streamed (for verification without decoding)."""
    digest = hashlib.sha256()
    total = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            digest.update(view[:n])
            total += n
    return FileEntry(digest.hexdigest(), total)


def read_array(path: Path, expected: FileEntry | None = None) -> np.ndarray:
    """An ``.npy`` file as a writable array, without ever unpickling."""
    buf = read_bytes(path, expected)
    head = io.BytesIO(buf[: 1 << 16].tobytes())
    try:
        version = np.lib.format.read_magic(head)
        reader = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = reader(head)
    except ValueError as exc:
        raise SnapshotError(f"{path} is not a valid .npy file: {exc}") from exc
    if dtype.hasobject:
        raise SnapshotError(f"refusing {path}: dtype {dtype} holds Python objects (would need pickle)")
    count = int(np.prod(shape, dtype=np.int64))
    offset = head.tell()
    if offset + count * dtype.itemsize != len(buf):
        raise SnapshotError(
            f"{path}: header says {shape} {dtype} but the file holds {len(buf) - offset} data bytes"
        )
    flat = buf[offset:].view(dtype)
    return flat.reshape(shape, order="F" if fortran else "C")


def read_table(path: Path, expected: FileEntry | None = None) -> pa.Table:
    """A Parquet file as an Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = read_bytes(path, expected)
    try:
        return pq.read_table(pa.py_buffer(buf))
    except (pa.ArrowException, OSError) as exc:
        raise SnapshotError(f"{path} is not a valid Parquet file: {exc}") from exc


def read_tensor(path: Path, expected: FileEntry | None = None) -> Any:
    """A tensor saved by :func:`write_tensor`, loaded with ``weights_only=True`` (no arbitrary unpickling)."""
    import torch

    buf = read_bytes(path, expected)
    try:
        return torch.load(io.BytesIO(buf), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for a bad file; all mean "not a valid tensor file"
        raise SnapshotError(f"{path} is not a valid tensor file: {exc}") from exc
