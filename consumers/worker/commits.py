"""Snapshots and offset commits of one worker, as the numbered steps of :mod:`consumers.worker.offsets`.

:class:`CommitCoordinator` owns the checkpointer, the ledger and the runner (wrapped in a
:class:`~consumers.worker.tracked.TrackedRunner`) and keeps one invariant: **at most one snapshot is
written but not yet committed** (``pending``). The cadence takes no new snapshot while one is
pending, so retention (``snapshot.keep >= 2``) can never prune the newest confirmed snapshot, which
a rollback may need.

* :meth:`restore` (start): find the newest confirmed snapshot, remove newer ones, load it.
  Snapshots that another writer left in the directory (a replay warming the model up, say) count
  as confirmed: only this worker's own snapshots wait for a commit.
* :meth:`step` (after each loop turn): collect finished background snapshots, commit the pending
  one (retrying with backoff while the broker is away), start a new one when due.
* :meth:`checkpoint` (revocation, shutdown): the same, synchronously — snapshot if anything was
  read since the last one, then commit; False when either step failed.
* :meth:`rollback` (partitions lost, or revoked without a commit): reload the newest confirmed
  snapshot, because the partitions may already be consumed by another worker from the older
  committed offsets; the lost work is consumed again, never applied twice.
* :meth:`start_positions` (assignment): where each newly owned partition starts.

Only partitions owned at commit time are committed, and never below the position they were
assigned at (``floors``), so a commit can neither move another worker's partition nor move a
partition backwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from consumers.backoff import Backoff
from consumers.sources import PartitionedSource, split_key
from consumers.worker.offsets import (
    Ledger,
    Token,
    abort_after,
    confirmed_seq,
    format_metadata,
    next_chain,
    parse_metadata,
    start_position,
)
from consumers.worker.tracked import WORKER_BUNDLE, TrackedRunner
from pipeline.errors import SnapshotError
from state.checkpoint import Checkpointer, SnapshotResult
from state.snapshot import SnapshotStore

__all__ = ["CommitCoordinator"]

log = logging.getLogger(__name__)


class CommitCoordinator:
    """Snapshot, commit, restore and roll back one worker's state (see the module docstring).

    Parameters
    ----------
    store, checkpointer, ledger
        The state directory's snapshots, their writer and the worker's ledger.
    source
        The group consumer (a :class:`~consumers.sources.PartitionedSource`): ownership, commits and
        committed offsets.
    make_runner
        Builds a fresh :class:`TrackedRunner` (used at start and by :meth:`rollback`).
    on_result
        Called with every finished :class:`SnapshotResult` (for metrics).
    commit_timeout_ms
        How long one commit may block.
    """

    def __init__(
        self,
        store: SnapshotStore,
        checkpointer: Checkpointer,
        ledger: Ledger,
        source: PartitionedSource,
        make_runner: Callable[[], TrackedRunner],
        on_result: Callable[[SnapshotResult], None] | None = None,
        commit_timeout_ms: int = 10_000,
        backoff: Backoff | None = None,
    ):
        self.store, self.checkpointer, self.ledger, self.source = store, checkpointer, ledger, source
        self.make_runner, self.on_result = make_runner, on_result
        self.commit_timeout_ms = commit_timeout_ms
        self.backoff = backoff or Backoff(0.5, 10.0)
        self.tracked: TrackedRunner = make_runner()
        self.pending: dict[str, Any] | None = None  # manifest written, not yet committed
        self.confirmed_seq = 0
        self.confirmed_records = 0
        self.captured_records = 0  # records of the newest capture (pending or confirmed)
        self.chains: dict[str, list[Token]] = {}
        self.floors: dict[str, int] = {}
        self.commit_error: str | None = None
        self.commits = 0
        self.rollbacks = 0
        self._retry_at = 0.0

    @property
    def worker_id(self) -> str:
        return self.ledger.worker_id

    # ------------------------------------------------------------------ start
    def restore(self) -> dict[str, Any] | None:
        """Load the newest confirmed snapshot into a fresh runner; returns its manifest (None: fresh)."""
        floor = self.ledger.confirmed_seq
        keys: set[str] = set()
        for seq in (s for s in self.store.seqs() if s > self.ledger.confirmed_seq):
            try:
                manifest = self.store.read_manifest(seq)
            except SnapshotError as exc:
                log.warning("snapshot %08d unreadable while checking commits: %s", seq, exc)
                continue
            if _writer(manifest) != self.worker_id:
                floor = seq  # written by something else (a replay, say): not ours to confirm or abort
            else:
                keys.update(k for k in manifest["positions"] if _is_partition_key(k))
        committed = self.source.committed_offsets(sorted(keys), timeout_ms=self.commit_timeout_ms)
        seq = confirmed_seq(self.worker_id, floor, committed)
        abort_after(self.store, seq)
        return self._load(seq)

    def _load(self, seq: int) -> dict[str, Any] | None:
        tracked = self.make_runner()
        manifest = self.checkpointer.restore(tracked)
        self.tracked = tracked
        self.pending = None
        records = tracked.counters["records"]
        self.confirmed_seq = manifest["seq"] if manifest else 0
        self.confirmed_records = self.captured_records = records
        if manifest is not None and manifest["seq"] > self.ledger.confirmed_seq:
            self.ledger.confirm(manifest["seq"], {})
        elif manifest is None and seq:
            log.error("the confirmed snapshot %08d is gone or invalid: starting from scratch", seq)
        return manifest

    # ------------------------------------------------------------------ steady state
    def drain(self) -> None:
        """Take the outcomes of finished snapshot writes; a successful one becomes ``pending``."""
        for result in self.checkpointer.take_results():
            if self.on_result is not None:
                self.on_result(result)
            if result.ok and result.manifest is not None:
                if self.pending is None or self.pending["seq"] < result.manifest["seq"]:
                    self.pending = result.manifest
            else:  # its effects are not durable: the next step snapshots them again
                last = self.pending["counters"]["records"] if self.pending else self.confirmed_records
                self.captured_records = int(last)

    def step(self) -> None:
        """One non-blocking turn: collect results, commit the pending snapshot, start one when due."""
        self.drain()
        if self.pending is not None and time.monotonic() >= self._retry_at:
            self.commit_pending()
        if self.pending is None and not self.checkpointer.in_flight and self._progressed():
            if self.checkpointer.due(self.tracked) and self.checkpointer.snapshot(self.tracked):
                self.captured_records = self.tracked.counters["records"]

    def request(self) -> None:
        """Snapshot (and commit) at the next :meth:`step`."""
        self.checkpointer.request()

    def _progressed(self) -> bool:
        return self.tracked.counters["records"] != self.captured_records

    def commit_pending(self) -> bool:
        """Commit the pending snapshot's positions of the owned partitions; True when none is pending after."""
        manifest = self.pending
        if manifest is None:
            return True
        seq = manifest["seq"]
        owned = set(self.source.owned())
        offsets = {
            k: int(v)
            for k, v in manifest["positions"].items()
            if k in owned and int(v) >= self.floors.get(k, 0)
        }
        chains = {k: next_chain(self.worker_id, seq, self.chains.get(k, ())) for k in offsets}
        try:
            self.source.commit(
                offsets, {k: format_metadata(c) for k, c in chains.items()}, timeout_ms=self.commit_timeout_ms
            )
        except Exception as exc:  # broker away, rebalance in progress, ...: retried, never fatal
            self.commit_error = f"offset commit failed: {exc!r}"
            delay = self.backoff.next_delay()
            self._retry_at = time.monotonic() + delay
            log.warning("committing snapshot %08d failed: %r; retrying in %.1f s", seq, exc, delay)
            return False
        self.chains.update(chains)
        self.ledger.confirm(seq, offsets)
        self.pending, self.commit_error = None, None
        self.confirmed_seq = seq
        self.confirmed_records = int(manifest.get("counters", {}).get("records", self.confirmed_records))
        self.commits += 1
        self.backoff.reset()
        self._retry_at = 0.0
        return True

    def retry_now(self) -> None:
        """A commit waiting for its retry runs at the next :meth:`step` (the broker is back)."""
        self._retry_at = 0.0

    def checkpoint(self) -> bool:
        """Snapshot now if anything was read since the last one, and commit: True when all is confirmed."""
        self.checkpointer.wait()
        self.drain()
        if not self.commit_pending():
            return False
        if self._progressed():
            self.captured_records = self.tracked.counters["records"]
            ok = self.checkpointer.snapshot(self.tracked, block=True)
            self.drain()
            if not ok:
                self.captured_records = self.confirmed_records
                return False
        return self.commit_pending()

    def ahead(self) -> bool:
        """Whether the runner holds effects that no committed snapshot holds."""
        return self.pending is not None or self.tracked.counters["records"] != self.confirmed_records

    def rollback(self, why: str) -> bool:
        """Return to the newest confirmed snapshot (dropping newer effects); True if anything was undone."""
        self.checkpointer.wait()
        self.drain()
        if not self.ahead():
            return False
        log.warning(
            "rolling back to snapshot %08d (%d records; now %d): %s",
            self.confirmed_seq,
            self.confirmed_records,
            self.tracked.counters["records"],
            why,
        )
        abort_after(self.store, self.confirmed_seq)
        self._load(self.confirmed_seq)
        self.rollbacks += 1
        return True

    # ------------------------------------------------------------------ assignment
    def start_positions(self, keys: Iterable[str]) -> tuple[dict[str, int], list[str]]:
        """Where each of ``keys`` starts: ``({key: offset}, [keys for auto_offset_reset])``.

        Raises what fetching the committed offsets raises (the caller retries later).
        """
        keys = list(keys)
        committed = self.source.committed_offsets(keys, timeout_ms=self.commit_timeout_ms)
        seeks, default = {}, []
        positions = self.tracked.positions
        for key in keys:
            found = committed.get(key)
            self.chains[key] = parse_metadata(found[1]) if found else []
            pos = start_position(self.worker_id, found, positions.get(key))
            if pos is None:
                default.append(key)
            else:
                seeks[key] = pos
        return seeks, default

    def started(self, seeks: dict[str, int]) -> None:
        """Record the positions newly owned partitions were sought to (floors of later commits)."""
        for key, pos in seeks.items():
            self.floors[key] = pos
            # the state's view of where this partition continues; another worker applied what lies before
            self.tracked.positions[key] = pos

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.floors.pop(key, None)
            self.chains.pop(key, None)


def _writer(manifest: dict[str, Any]) -> str | None:
    """The worker id recorded in a snapshot (None for snapshots that no worker wrote)."""
    return manifest.get("learners", {}).get(WORKER_BUNDLE, {}).get("meta", {}).get("worker_id")


def _is_partition_key(key: str) -> bool:
    try:
        split_key(key)
    except ValueError:
        return False
    return True
