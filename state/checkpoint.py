"""When to snapshot, and how without stalling the stream: the :class:`Checkpointer`.

A :class:`Checkpointer` is a runner observer. After a batch it decides whether a snapshot is due
(at every multiple of N records, every T seconds, or on demand through :meth:`Checkpointer.request`, which the
CLI wires to SIGUSR1). The runner's state is copied on the consuming thread (``Runner.state()``
returns copies: the only pause the stream sees), then written, fsynced and renamed on a
background thread. At most one write is in flight; a snapshot that falls due meanwhile waits for
the next batch. A failed write is logged and counted, its metric history is carried into the next
snapshot, and consumption goes on. :meth:`Checkpointer.final` writes the last snapshot in the
foreground on shutdown; :meth:`Checkpointer.restore` loads the newest valid snapshot into a runner.

Examples
--------
>>> import tempfile
>>> from pipeline.config import load_config
>>> from pipeline.runner import RawBatch, Runner
>>> ev = b'{"event_id":"e%d","ts":1,"user_id":"u","item_id":"i","label":1}'
>>> config = load_config()
>>> store = SnapshotStore(tempfile.mkdtemp())
>>> with Checkpointer(store, "h", every_events=2, background=False, catalog=False) as ckpt:
...     runner = Runner.from_config(config, observers=[ckpt])
...     for i in range(3):
...         _ = runner.process(RawBatch(values=[ev % i], positions={"f.jsonl": i + 1}))
...     manifest = ckpt.final(runner)
>>> ckpt.snapshots_written, store.seqs(), manifest["positions"]
(2, [1, 2], {'f.jsonl': 3})
>>> with Checkpointer(store, "h", catalog=False) as ckpt:
...     fresh = Runner.from_config(config)
...     ckpt.restore(fresh)["seq"], fresh.positions, fresh.counters["applied"]
(2, {'f.jsonl': 3}, 3)
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config, config_hash
from pipeline.errors import SnapshotError
from pipeline.runner import BatchResult, Runner
from state.compatibility import compare_identity, config_identity
from state.snapshot import SnapshotStore, check_writable

__all__ = ["Checkpointer", "SnapshotResult", "WriterLock"]

log = logging.getLogger(__name__)


class WriterLock:
    """Exclusive right to write into a state directory (``flock`` on ``<state_dir>/.writer.lock``).

    Held by a :class:`Checkpointer` for its lifetime and by ``streamlearn state prune``; the
    kernel releases it when the process dies, even by kill -9.
    """

    def __init__(self, state_dir: str | os.PathLike):
        self.path = Path(state_dir) / ".writer.lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SnapshotError(
                f"state directory {str(self.path.parent)!r} is in use by another writer (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class SnapshotResult:
    """The outcome of one snapshot attempt (drained with :meth:`Checkpointer.take_results`)."""

    ok: bool
    duration_s: float
    records: int
    manifest: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class _Job:
    """A snapshot captured on the consuming thread, ready to be written anywhere."""

    bundles: dict
    positions: dict[str, int]
    counters: dict[str, int]
    kinds: dict[str, str]
    history: list = field(default_factory=list)
    drift: list = field(default_factory=list)


class Checkpointer:
    """Snapshots a runner on a cadence, on demand and on shutdown.

    Parameters
    ----------
    store
        Where snapshots go; prepared for writing here (a non-writable directory raises
        :class:`SnapshotError` now, not at the first snapshot; leftovers of a crash are removed).
    config_hash
        :func:`pipeline.config.config_hash` of the running configuration, recorded in every
        snapshot and checked by :meth:`restore`.
    every_events, every_seconds
        Cadence: at each multiple of ``every_events`` records read (at the first batch boundary
        past it), and ``every_seconds`` after the previous snapshot; 0 turns either off.
    background
        Write on a background thread (default) or inline.
    catalog
        Refresh ``<state_dir>/catalog.duckdb`` after each snapshot.
    drift_source
        Called at each snapshot for the drift events since the previous one (dicts with
        ``ts_ms, events, signal, detector, score``); defaults to ``runner.take_drift_events``
        (every :class:`~pipeline.observers.DriftEventSource` observer of the runner).
    on_config_mismatch
        ``"error"`` (default): :meth:`restore` refuses a snapshot written under another
        configuration when the change alters what the stored state means
        (:mod:`state.compatibility`: a learner's kind or parameters, the features, the seed, the
        unit of times); adding or removing learners is taken (new ones start cold, removed ones
        are dropped, both noted in ``restore_notes``). ``"warn"``: load it anyway, with a warning.
    identity
        :func:`state.compatibility.config_identity` of the running configuration, recorded in
        every snapshot so that a later restore can tell what changed (None: the hash only).
    """

    def __init__(
        self,
        store: SnapshotStore,
        config_hash: str,
        every_events: int = 0,
        every_seconds: float = 0.0,
        background: bool = True,
        *,
        catalog: bool = True,
        drift_source: Callable[[], list[dict]] | None = None,
        on_config_mismatch: str = "error",
        identity: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if every_events < 0:
            raise ValueError(f"every_events must be >= 0 (0 = off), got {every_events}")
        if every_seconds < 0:
            raise ValueError(f"every_seconds must be >= 0 (0 = off), got {every_seconds}")
        if on_config_mismatch not in ("error", "warn"):
            raise ValueError(f"on_config_mismatch must be 'error' or 'warn', got {on_config_mismatch!r}")
        self.store = store
        self.config_hash = config_hash
        self.every_events = int(every_events)
        self.every_seconds = float(every_seconds)
        self.catalog = catalog
        self.drift_source = drift_source
        self.on_config_mismatch = on_config_mismatch
        self.identity = identity
        self.restore_notes: list[str] = []
        self._clock = clock
        check_writable(store.root)
        self._lock: WriterLock | None = WriterLock(store.root)
        try:
            store.prepare()  # only now: with the lock held, a *.tmp cannot belong to a live writer
        except BaseException:
            self._lock.release()
            raise
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="snapshot") if background else None
        self._future: Future | None = None
        self._mutex = threading.Lock()
        self._requested = False
        self._next_due_records = self.every_events
        self._last_capture_time = clock()
        self._written_records = 0
        self._carry: tuple[list, list] = ([], [])  # history and drift of failed writes
        self._results: list[SnapshotResult] = []
        self.snapshots_written = 0
        self.snapshot_failures = 0
        self.restore_skipped = 0
        self.last_success_ts: float | None = None
        self.last_duration: float | None = None
        self.last_bytes = 0
        self.last_manifest: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: Config, *, catalog: bool = True) -> Checkpointer:
        """The store at ``[snapshot] dir`` and a checkpointer with the ``[snapshot]`` settings."""
        snap = config.snapshot
        return cls(
            SnapshotStore(snap.dir, keep=snap.keep),
            config_hash(config),
            identity=config_identity(config),
            every_events=snap.every_events,
            every_seconds=snap.every_seconds,
            background=snap.background,
            catalog=catalog,
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ cadence
    def on_batch(self, runner: Runner, result: BatchResult) -> None:
        """RunnerObserver hook: snapshot if one is due."""
        self.tick(runner)

    def tick(self, runner: Runner) -> bool:
        """Snapshot if due (also callable when the stream is idle); True if one was started."""
        return self.due(runner) and self.snapshot(runner)

    def due(self, runner: Runner) -> bool:
        if self._requested:
            return True
        if self.every_events and runner.counters["records"] >= self._next_due_records:
            return True
        return bool(self.every_seconds) and self._clock() - self._last_capture_time >= self.every_seconds

    def _schedule(self, records: int) -> None:
        # due at multiples of every_events (like the runner's report_every): a cadence that an
        # on-demand snapshot or a restore does not shift
        self._next_due_records = (
            (records // self.every_events + 1) * self.every_events if self.every_events else 0
        )
        self._last_capture_time = self._clock()

    def request(self) -> None:
        """Ask for a snapshot after the current batch (safe to call from a signal handler)."""
        self._requested = True

    @property
    def in_flight(self) -> bool:
        return self._future is not None and not self._future.done()

    # ------------------------------------------------------------------------------ snapshots
    def snapshot(self, runner: Runner, block: bool = False) -> bool:
        """Capture the runner's state now and write it (in the background unless ``block``).

        Returns False without capturing when a background write is still in flight and
        ``block`` is False (the snapshot stays due); otherwise True, or, when ``block``, whether
        the write succeeded.
        """
        if self.in_flight:
            if not block:
                return False
            self.wait()
        job = self._capture(runner)
        if job is None:
            return False
        if self._executor is None or block:
            return self._write(job).ok
        self._future = self._executor.submit(self._write, job)
        return True

    def _capture(self, runner: Runner) -> _Job | None:
        """The state to write, copied on the consuming thread; None (counted) if that failed."""
        records = runner.counters["records"]
        self._requested = False
        self._schedule(records)
        started = time.perf_counter()
        try:
            bundles = runner.state()
        except Exception as exc:  # a learner that cannot export its state must not stop the stream
            self._failed(
                SnapshotResult(False, time.perf_counter() - started, records, error=f"state(): {exc}")
            )
            return None
        take_drift = self.drift_source or runner.take_drift_events
        with self._mutex:
            history, drift = self._carry
            self._carry = ([], [])
        return _Job(
            bundles=bundles,
            positions=dict(runner.positions),
            counters=dict(runner.counters),
            kinds={"_runner": "runner"} | {lr.name: lr.kind for lr in runner.learners},
            history=history + runner.take_history(),
            drift=drift + list(take_drift()),
        )

    def _failed(self, result: SnapshotResult, job: _Job | None = None) -> SnapshotResult:
        with self._mutex:
            self.snapshot_failures += 1
            if job is not None:  # its history goes into the next snapshot
                self._carry = (job.history + self._carry[0], job.drift + self._carry[1])
            self._results.append(result)
        log.error(
            "snapshot failed (%d so far), the previous one stays valid: %s",
            self.snapshot_failures,
            result.error,
        )
        return result

    def _write(self, job: _Job) -> SnapshotResult:
        started = time.perf_counter()
        records = job.counters.get("records", 0)
        try:
            manifest = self.store.write(
                job.bundles,
                positions=job.positions,
                events_applied=job.counters.get("applied", 0),
                config_hash=self.config_hash,
                config=self.identity,
                counters=job.counters,
                kinds=job.kinds,
                history=job.history,
                drift_events=job.drift,
            )
        except Exception as exc:  # a failed snapshot must never stop the stream
            return self._failed(
                SnapshotResult(False, time.perf_counter() - started, records, error=str(exc)), job
            )
        result = SnapshotResult(True, time.perf_counter() - started, records, manifest=manifest)
        with self._mutex:
            self.snapshots_written += 1
            self.last_success_ts = time.time()
            self.last_duration = result.duration_s
            self.last_bytes = manifest["bytes"]
            self.last_manifest = manifest
            self._written_records = max(self._written_records, records)
            self._results.append(result)
        log.info(
            "snapshot %08d written: %d bytes in %.3f s", manifest["seq"], manifest["bytes"], result.duration_s
        )
        self._after_write(manifest["seq"])
        return result

    def _after_write(self, seq: int) -> None:
        try:
            self.store.prune(protect=[seq])
        except Exception as exc:  # retention is housekeeping: report and go on
            log.warning("pruning old snapshots failed: %s", exc)
        if self.catalog:
            try:
                from state.catalog import Catalog

                Catalog(self.store.root).refresh()
            except Exception as exc:  # e.g. the DuckDB file is open in another process
                log.warning("refreshing the catalog failed: %s", exc)

    def wait(self) -> None:
        """Block until the background write in flight (if any) has finished."""
        if self._future is not None:
            self._future.result()

    def final(self, runner: Runner) -> dict[str, Any] | None:
        """The shutdown snapshot, written in the foreground; returns the newest manifest.

        Skipped when nothing was read since the last successful snapshot. Raises
        :class:`SnapshotError` (after counting it) when the write fails, so the caller can exit
        non-zero. Call it only between batches, never after ``runner.process`` raised midway.
        """
        self.wait()
        if runner.counters["records"] != self._written_records or self._requested:
            job = self._capture(runner)
            if job is None:
                raise SnapshotError(
                    "final snapshot failed: the runner's state could not be captured (see log)"
                )
            result = self._write(job)
            if not result.ok:
                raise SnapshotError(f"final snapshot failed: {result.error}")
        return self.last_manifest

    def take_results(self) -> list[SnapshotResult]:
        """Outcomes since the last call, oldest first (for metrics and Kafka offset commits)."""
        with self._mutex:
            out, self._results = self._results, []
        return out

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: written, failures, last success time, duration and size."""
        with self._mutex:
            return {
                "snapshots_written": self.snapshots_written,
                "snapshot_failures": self.snapshot_failures,
                "restore_skipped": self.restore_skipped,
                "last_success_ts": self.last_success_ts,
                "last_duration": self.last_duration,
                "last_bytes": self.last_bytes,
                "in_flight": self.in_flight,
            }

    # ------------------------------------------------------------------------------ restore
    def restore(self, runner: Runner) -> dict[str, Any] | None:
        """Load the newest valid snapshot into ``runner``; returns its manifest, or None if there is none.

        Corrupt or too-new snapshots are skipped with a warning (counted in ``restore_skipped``).
        """
        before = self.store.skipped
        found = self.store.latest_valid()
        self.restore_skipped += self.store.skipped - before
        if found is None:
            return None
        manifest, bundles = found
        cold: list[str] = []
        self.restore_notes = []
        if manifest["config_hash"] != self.config_hash:
            cold = self._reconcile(manifest)
        try:
            runner.load_state(bundles, cold=cold)
        except (KeyError, ValueError) as exc:
            raise SnapshotError(f"snapshot {manifest['seq']:08d} does not fit this runner: {exc}") from exc
        self._written_records = runner.counters["records"]
        self._schedule(self._written_records)
        self.last_manifest = manifest
        return manifest

    def _reconcile(self, manifest: dict[str, Any]) -> list[str]:
        """Check a snapshot written under another configuration; returns the learners that start cold."""
        seq = f"{manifest['seq']:08d}"
        saved = manifest.get("config")
        if saved is None or self.identity is None:  # a snapshot of an older version: the hash only
            msg = (
                f"snapshot {seq} was written under another configuration "
                f"(config hash {manifest['config_hash'][:12]}…, now {self.config_hash[:12]}…)"
            )
            if self.on_config_mismatch == "error":
                raise SnapshotError(
                    msg + "; restore it with the same learners, features and seed, or use a new state dir"
                )
            log.warning("%s; loading it anyway", msg)
            return []
        change = compare_identity(saved, self.identity)
        if change.refusals and self.on_config_mismatch == "error":
            raise SnapshotError(
                f"snapshot {seq} was written under another configuration: {'; '.join(change.refusals)}. "
                f"Restore with the settings it was written with, or start a new state dir"
            )
        for note in [*change.refusals, *change.notes]:
            log.warning("snapshot %s: %s", seq, note)
        self.restore_notes = [*change.refusals, *change.notes]
        return change.cold

    def close(self) -> None:
        """Wait for the write in flight, stop the writer thread and release the directory."""
        if self._executor is not None:
            self.wait()
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
