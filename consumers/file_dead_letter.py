"""Dead-letter sink for replays: one JSON line per invalid record (reason, detail, origin, value)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from pipeline.errors import ConfigError
from pipeline.events import DeadLetter

__all__ = ["FileDeadLetterSink"]


class FileDeadLetterSink:
    """Appends dead letters to a JSONL file, created (with its directory) on first use.

    Examples
    --------
    >>> import tempfile, json
    >>> path = tempfile.mkdtemp() + "/dlq.jsonl"
    >>> sink = FileDeadLetterSink(path)
    >>> sink.write([DeadLetter(0, "malformed_json", "invalid JSON", b"{", {"file": "x.jsonl", "line": 1})])
    >>> sink.close()
    >>> json.loads(open(path).read())["origin"]
    {'file': 'x.jsonl', 'line': 1}
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None
        self.written = 0

    def _open(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
        except OSError as exc:
            raise ConfigError(f"cannot open dead-letter file {str(self.path)!r}: {exc.strerror}") from exc
        return self._fh

    def write(self, dead_letters: list[DeadLetter]) -> None:
        if not dead_letters:
            return
        fh = self._fh or self._open()
        fh.write(b"".join(orjson.dumps(d.to_json()) + b"\n" for d in dead_letters))
        self.written += len(dead_letters)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None
