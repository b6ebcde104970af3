"""The worker's commit protocol: which snapshot is the truth, and where each partition starts.

A worker's state lives in its snapshots (local files), the group's progress in Kafka's committed
offsets; the two cannot be written atomically. The protocol makes the **Kafka commit the commit
point** and lets every committed offset say which snapshot it came from:

1. A snapshot (runner state + positions) is written atomically: it is *prepared*.
2. Its positions for the partitions the worker owns are committed to Kafka, each with the metadata
   ``"streamlearn/1 <worker>:<seq> ..."``: a *provenance chain*, newest first, of the snapshot
   that produced the offset and of the last snapshots of the partition's previous owners (at most
   :data:`MAX_TOKENS`). The snapshot is now *confirmed*.
3. The confirmation is also recorded in ``<state_dir>/worker.json`` (the :class:`Ledger`, which
   also holds the worker's id), which covers offsets that have since expired.

On start the worker restores the newest *confirmed* snapshot: seq = max(ledger, every token of
its own id found in the chains of the partitions its snapshots mention). Snapshots written after
it were never committed — another worker may already have taken their partitions over from the
older offsets — so they are removed (:func:`abort_after`), and their events are consumed again.
The chain is what tells "committed, then the partition moved on" (our token survives in the new
owner's chain) apart from "never committed" after another worker has overwritten the offset.

On each assignment a partition starts (:func:`start_position`) at our own position when the last
commit was ours (the snapshot is the truth), else at the committed offset (another worker
applied everything before it), else at our position if we have one, else at ``auto_offset_reset``.

Residual window: a worker killed after step 2 but before step 3 whose partitions then pass
through more than :data:`MAX_TOKENS` owners before it returns cannot find its token; the ledger
then decides and the events of that last snapshot are consumed again by it (never lost).

Examples
--------
>>> chain = next_chain("w-a", 7, parse_metadata("streamlearn/1 w-b:3 w-a:5"))
>>> format_metadata(chain)
'streamlearn/1 w-a:7 w-b:3'
>>> confirmed_seq("w-a", 4, {"t:0": (120, "streamlearn/1 w-b:9 w-a:6"), "t:1": (80, "")})
6
>>> start_position("w-a", (500, "streamlearn/1 w-b:2 w-a:6"), own=300)
500
>>> start_position("w-a", (300, "streamlearn/1 w-a:6"), own=300), start_position("w-a", None, own=None)
(300, None)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from state.snapshot import SnapshotStore

__all__ = [
    "MAX_TOKENS",
    "METADATA_PREFIX",
    "Ledger",
    "Token",
    "abort_after",
    "confirmed_seq",
    "format_metadata",
    "next_chain",
    "parse_metadata",
    "start_position",
]

log = logging.getLogger(__name__)

METADATA_PREFIX = "streamlearn/1"
#: tokens kept in a chain (Kafka allows 4096 bytes of metadata by default; 8 tokens use < 300)
MAX_TOKENS = 8
LEDGER_FILE = "worker.json"


@dataclass(frozen=True)
class Token:
    """``<worker>:<seq>``: snapshot ``seq`` of the worker whose state directory has id ``worker``."""

    worker: str
    seq: int

    def __str__(self) -> str:
        return f"{self.worker}:{self.seq}"


def parse_metadata(text: str | None) -> list[Token]:
    """The provenance chain in a committed offset's metadata; [] for anything else (never raises)."""
    parts = (text or "").split()
    if not parts or parts[0] != METADATA_PREFIX:
        return []
    chain = []
    for part in parts[1:]:
        worker, sep, seq = part.rpartition(":")
        if sep and worker and seq.isdigit():
            chain.append(Token(worker, int(seq)))
    return chain


def format_metadata(chain: Iterable[Token]) -> str:
    return " ".join([METADATA_PREFIX, *map(str, chain)])


def next_chain(worker: str, seq: int, inherited: Iterable[Token]) -> list[Token]:
    """The chain committed with our snapshot ``seq``: our token first, then each other worker's newest."""
    chain, seen = [Token(worker, seq)], {worker}
    for token in inherited:
        if token.worker not in seen:
            seen.add(token.worker)
            chain.append(token)
    return chain[:MAX_TOKENS]


def confirmed_seq(worker: str, ledger_seq: int, committed: Mapping[str, tuple[int, str]]) -> int:
    """The newest snapshot of ``worker`` known to be committed: by the ledger or by any chain."""
    found = [t.seq for _, meta in committed.values() for t in parse_metadata(meta) if t.worker == worker]
    return max([ledger_seq, *found])


def start_position(worker: str, committed: tuple[int, str] | None, own: int | None) -> int | None:
    """Where a newly assigned partition starts (None: the consumer's ``auto_offset_reset``)."""
    if committed is None:
        return own
    offset, meta = committed
    chain = parse_metadata(meta)
    if chain and chain[0].worker == worker and own is not None:
        return own
    return offset


def abort_after(store: SnapshotStore, seq: int) -> list[int]:
    """Remove the snapshots newer than ``seq`` (never committed); returns their seqs.

    Call only while holding the state directory's writer lock. A crash midway leaves
    ``<seq>.deleting`` directories, which the store's ``prepare()`` removes.
    """
    doomed = [s for s in store.seqs() if s > seq]
    for s in doomed:
        path = store.path(s)
        trash = path.with_name(path.name + ".deleting")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    if doomed:
        log.warning(
            "removed snapshot(s) %s: written but never committed to Kafka (their events are consumed again)",
            ", ".join(f"{s:08d}" for s in doomed),
        )
    return doomed


class Ledger:
    """``<state_dir>/worker.json``: the worker's id and the newest snapshot confirmed by a commit.

    The id is created once per state directory: a state directory *is* a worker's identity.
    """

    def __init__(self, state_dir: str | os.PathLike):
        self.path = Path(state_dir) / LEDGER_FILE
        data = self._read()
        self.worker_id: str = data.get("worker_id") or f"w-{uuid.uuid4().hex[:12]}"
        self.confirmed_seq: int = int(data.get("confirmed_seq", 0))
        self.positions: dict[str, int] = {str(k): int(v) for k, v in data.get("positions", {}).items()}
        if not data:
            self._write()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{self.path} is unreadable ({exc}); remove it to start this worker afresh"
            ) from exc
        if not isinstance(data, dict):
            raise ValueError(f"{self.path} must hold a JSON object")
        return data

    def confirm(self, seq: int, positions: Mapping[str, int]) -> None:
        """Record that snapshot ``seq`` was committed with ``positions`` (atomic and durable)."""
        self.confirmed_seq = max(self.confirmed_seq, int(seq))
        self.positions.update({k: int(v) for k, v in positions.items()})
        self._write()

    def _write(self) -> None:
        body = {"worker_id": self.worker_id, "confirmed_seq": self.confirmed_seq, "positions": self.positions}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(body, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, worker_id={self.worker_id!r}, confirmed_seq={self.confirmed_seq})"
