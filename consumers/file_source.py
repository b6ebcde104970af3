"""Replay of logged events from files: JSONL (optionally gzip), Parquet and CSV.

A source is a list of files (from paths, directories or globs, in sorted order) read as
micro-batches of exactly ``batch_size`` records (the last of each file may be shorter), so that
batch boundaries — and therefore learner updates — are identical whether a replay runs straight
through or resumes from a snapshot. Positions are ``{file path: next record index}``.

JSONL and gzip JSONL yield raw bytes per line (validated by :func:`pipeline.events.decode_json`);
blank lines are skipped and counted (``blank_lines``), and positions count lines, blank or not. A
file that holds one JSON array instead of JSON Lines is refused with a hint; a truncated or
corrupt gzip file yields every whole line before the damage, then raises
:class:`~pipeline.errors.InputError` naming the file and the last good line.

Parquet and CSV yield Arrow batches (:func:`pipeline.events.decode_arrow`), whose column types are
checked once per file (:func:`pipeline.events.columns.check_schema`: a required column missing or
of an unusable type stops with an error naming it; columns that cannot be features are named in a
warning). In both, every column that is not an event field is a feature.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "a.jsonl").write_text('{"x": 1}\\n{"x": 2}\\n{"x": 3}\\n')
>>> src = FileSource([str(d)], batch_size=2)
>>> [(len(b), b.positions) for b in src]  # doctest: +ELLIPSIS
[(2, {'.../a.jsonl': 2}), (1, {'.../a.jsonl': 3})]
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, InputError
from pipeline.events.columns import check_schema
from pipeline.runner import RawBatch

__all__ = ["FileSource", "detect_format", "expand_paths"]

log = logging.getLogger("streamlearn.source")
_STRING_FIELDS = ("event_id", "user_id", "item_id", "event_type", "request_id", "exposure_id")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}


def detect_format(path: str) -> str:
    """``jsonl``, ``parquet`` or ``csv`` from the file name (a ``.gz`` suffix is looked through)."""
    name = path[:-3] if path.endswith(".gz") else path
    fmt = _SUFFIXES.get(Path(name).suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of {path!r}: expected .jsonl, .ndjson, .parquet or .csv (optionally .gz)"
        )
    return fmt


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files named directly, inside directories (recursively) or matched by globs, sorted, unique."""
    out: list[str] = []
    for p in paths:
        if any(ch in p for ch in "*?["):
            matched = sorted(glob.glob(p, recursive=True))
            if not matched:
                raise ConfigError(f"no files match {p!r}")
            out.extend(m for m in matched if os.path.isfile(m))
        elif os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*") if f.is_file() and _has_known_suffix(f.name))
            if not found:
                raise ConfigError(f"directory {p!r} holds no .jsonl/.parquet/.csv files")
            out.extend(found)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ConfigError(f"input file not found: {p!r}")
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _has_known_suffix(name: str) -> bool:
    try:
        detect_format(name)
        return True
    except ConfigError:
        return False


class FileSource:
    """Micro-batches from event files.

    Parameters
    ----------
    paths
        Files, directories or glob patterns.
    batch_size
        Records per micro-batch.
    fmt
        ``auto`` (by suffix), ``jsonl``, ``parquet`` or ``csv``.
    start_at
        Skip this many records from the start of the input (across files, in order).
    """

    def __init__(self, paths: Sequence[str], batch_size: int = 2000, fmt: str = "auto", start_at: int = 0):
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if start_at < 0:
            raise ConfigError(f"--start-at must be >= 0, got {start_at}")
        self.files = expand_paths(paths)
        self.batch_size = batch_size
        self.formats = {f: (detect_format(f) if fmt == "auto" else fmt) for f in self.files}
        self.start_at = start_at
        self._positions: dict[str, int] = {}
        self.bytes_total = sum(os.path.getsize(f) for f in self.files)
        self.bytes_done = 0
        self.current_file: str | None = None
        self.blank_lines = 0  # skipped JSONL lines holding only whitespace

    def seek(self, positions: dict[str, int]) -> None:
        """Resume: skip records before each file's saved position (files absent start at 0)."""
        self._positions = {k: int(v) for k, v in positions.items() if k in self.formats}

    def positions(self) -> dict[str, int]:
        return dict(self._positions)

    def __iter__(self) -> Iterator[RawBatch]:
        to_skip = self.start_at
        for path in self.files:
            self.current_file = path
            start = self._positions.get(path, 0)
            fmt = self.formats[path]
            reader = {"jsonl": self._jsonl, "parquet": self._parquet, "csv": self._csv}[fmt]
            for batch in reader(path, start):
                n = len(batch)
                if to_skip >= n:
                    to_skip -= n
                    continue
                if to_skip:
                    batch = _drop_head(batch, to_skip)
                    to_skip = 0
                self._positions[path] = batch.positions[path]
                yield batch
            self.bytes_done += os.path.getsize(path)

    # ------------------------------------------------------------------------------ readers
    def _jsonl(self, path: str, start: int) -> Iterator[RawBatch]:
        compressed = path.endswith(".gz")
        with open(path, "rb") as raw:
            f = _gzip_lines(raw) if compressed else raw
            row = start
            try:
                for _ in itertools.islice(f, start):
                    pass
                while True:
                    lines = (
                        _read_lines(f, self.batch_size)
                        if compressed
                        else list(itertools.islice(f, self.batch_size))
                    )
                    if not lines:
                        return
                    if row == 0:
                        _refuse_json_array(path, lines[0])
                    first = row
                    row += len(lines)
                    batch = self._line_batch(path, first, lines)
                    if batch is not None:
                        yield batch
            except _Damaged as exc:
                if exc.lines:
                    batch = self._line_batch(path, row, exc.lines)
                    row += len(exc.lines)
                    if batch is not None:
                        yield batch
                raise InputError(
                    f"{path}: the compressed file is truncated or corrupt after line {row:,} ({exc.cause}); "
                    f"the records up to line {row:,} were read"
                ) from exc.cause

    def _line_batch(self, path: str, first: int, lines: list[bytes]) -> RawBatch | None:
        """The records of ``lines`` (the file's lines ``first + 1 ...``), blank ones skipped."""
        values = [ln[:-2] if ln.endswith(b"\r\n") else ln[:-1] if ln.endswith(b"\n") else ln for ln in lines]
        keep = [i for i, v in enumerate(values) if v.strip()] if any(not v.strip() for v in values) else None
        if keep is not None:
            self.blank_lines += len(values) - len(keep)
            values = [values[i] for i in keep]
        end = first + len(lines)
        if not values:
            self._positions[path] = end  # a stretch of blank lines still moves the position on
            return None
        if keep is None:
            return RawBatch(values=values, positions={path: end}, origin=_line_origin(path, first))
        return RawBatch(
            values=values, positions={path: end}, origin=lambda i: {"file": path, "line": first + keep[i] + 1}
        )

    def _parquet(self, path: str, start: int) -> Iterator[RawBatch]:
        try:
            pf = pq.ParquetFile(path, memory_map=True)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"cannot read Parquet file {path!r}: {exc}") from exc
        _check_columns(pf.schema_arrow, path)
        first, row = pf.num_row_groups, 0
        for i in range(pf.num_row_groups):
            rows = pf.metadata.row_group(i).num_rows
            if row + rows > start:
                first = i
                break
            row += rows
        groups = list(range(first, pf.num_row_groups))
        skip = start - row
        # read whole row groups' worth at a time and slice (zero-copy): fewer, larger decodes
        read_rows = max(self.batch_size, 1 << 16)
        batches = pf.iter_batches(batch_size=read_rows, row_groups=groups) if groups else iter(())
        yield from self._rebatch(path, batches, start, skip)

    def _csv(self, path: str, start: int) -> Iterator[RawBatch]:
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in _STRING_FIELDS})
        try:
            reader = pacsv.open_csv(
                path, convert_options=convert, read_options=pacsv.ReadOptions(block_size=1 << 22)
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"cannot read CSV file {path!r}: {exc}") from exc
        _check_columns(reader.schema, path)
        yield from self._rebatch(path, reader, start, start)

    def _rebatch(self, path: str, batches, start: int, skip: int) -> Iterator[RawBatch]:
        """Re-chunk Arrow batches into exactly ``batch_size`` rows, after skipping ``skip`` rows."""
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        row = start
        for b in batches:
            if skip:
                if b.num_rows <= skip:
                    skip -= b.num_rows
                    continue
                b = b.slice(skip)
                skip = 0
            if not pending:  # the usual case: zero-copy slices of one read batch
                whole = (b.num_rows // self.batch_size) * self.batch_size
                for lo in range(0, whole, self.batch_size):
                    head = b.slice(lo, self.batch_size)
                    yield RawBatch(
                        arrow=head, positions={path: row + head.num_rows}, origin=_row_origin(path, row)
                    )
                    row += head.num_rows
                b = b.slice(whole)
                if not b.num_rows:
                    continue
            pending.append(b)
            pending_rows += b.num_rows
            while pending_rows >= self.batch_size:
                table = pa.Table.from_batches(pending)
                head = table.slice(0, self.batch_size).combine_chunks().to_batches()[0]
                rest = table.slice(self.batch_size)
                # zero-copy slices of the remainder: copying it for every batch was quadratic in a row group
                pending = [b for b in rest.to_batches() if b.num_rows]
                pending_rows = rest.num_rows
                yield RawBatch(
                    arrow=head, positions={path: row + head.num_rows}, origin=_row_origin(path, row)
                )
                row += head.num_rows
        if pending_rows:
            tail = pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            yield RawBatch(arrow=tail, positions={path: row + tail.num_rows}, origin=_row_origin(path, row))


def _line_origin(path: str, first: int):
    return lambda i: {"file": path, "line": first + i + 1}


def _row_origin(path: str, first: int):
    return lambda i: {"file": path, "row": first + i}


def _check_columns(schema: pa.Schema, path: str) -> None:
    ignored = check_schema(schema, path)
    if ignored:
        log.warning("%s: columns left out (no feature rule for their types): %s", path, ", ".join(ignored))


class _Damaged(Exception):
    """A compressed stream broke off; ``lines`` are the whole lines read before the damage."""

    def __init__(self, lines: list[bytes], cause: BaseException):
        super().__init__(str(cause))
        self.lines, self.cause = lines, cause


class _Broken(Exception):
    """Raised by :func:`_gzip_lines` after the last whole line before the damage."""


def _gzip_lines(f, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a gzip file (members concatenated), decompressed chunk by chunk.

    Decompressing ourselves, instead of through ``gzip.open`` behind a buffer, keeps every whole
    line before a damage: a buffered reader would lose what it had read ahead.
    """
    decomp, fed = zlib.decompressobj(wbits=31), False  # fed: the current member has begun
    pending = b""
    while True:
        data = f.read(chunk)
        if not data:
            if fed and not decomp.eof:
                raise _Broken(EOFError("compressed file ended before the end-of-stream marker"))
            if pending:
                yield pending  # a last line without a newline
            return
        while data:
            try:
                out = decomp.decompress(data)
            except zlib.error as exc:
                raise _Broken(exc) from exc
            data, fed = b"", True
            if decomp.eof:  # a member ended: the rest is the next member
                data, decomp, fed = decomp.unused_data, zlib.decompressobj(wbits=31), False
            if out:
                lines = (pending + out).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    yield line + b"\n"


def _read_lines(f, n: int) -> list[bytes]:
    """Up to ``n`` lines of :func:`_gzip_lines`; a damage raises :class:`_Damaged` with the lines before it."""
    lines: list[bytes] = []
    try:
        for line in itertools.islice(f, n):
            lines.append(line)
    except _Broken as exc:
        raise _Damaged(lines, exc.args[0]) from exc
    return lines


def _refuse_json_array(path: str, first_line: bytes) -> None:
    text = first_line[:64].lstrip()
    if text.startswith(b"[") and (text[1:].lstrip()[:1] in (b"{", b"") or text[1:2] in (b"\n", b"\r")):
        raise ConfigError(
            f"{path} holds a JSON array; streamlearn reads JSON Lines (one JSON object per line). "
            f"Convert it with: jq -c '.[]' {path} > events.jsonl"
        )


def _drop_head(batch: RawBatch, k: int) -> RawBatch:
    origin = batch.origin
    shifted = (lambda i: origin(i + k)) if origin else None
    if batch.values is not None:
        return RawBatch(values=batch.values[k:], positions=batch.positions, origin=shifted)
    return RawBatch(arrow=batch.arrow.slice(k), positions=batch.positions, origin=shifted)
