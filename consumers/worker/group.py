"""Snapshots, deltas and positions of a worker that shares one model with its group (``[group]``).

The counterpart of :class:`~consumers.worker.commits.CommitCoordinator` when ``group.enabled``:
the worker loop calls the same methods; what they do differs, because the **updates topic is the
commit point** (docs/scaling.md):

* every ``group.publish_every_ms`` (or ``group.publish_every_events`` of its own) the worker publishes the delta of what it learned from its
  partitions since its previous one, over the offset ranges it consumed
  (:class:`~pipeline.group.sync.ModelSync`), reads its peers' deltas and adds the accepted ones
  (:mod:`pipeline.group.fold`: every worker accepts the same deltas, in the same order);
* a snapshot is taken only when everything the worker learned is published *and read back
  accepted*, so a snapshot's model is exactly the fold of the updates topic up to the offset it
  records (bundle ``_group``: that offset, the frontiers, group-wide counts). Any snapshot is
  therefore a valid start, and none waits for a confirmation;
* a newly assigned partition starts at the group's frontier (after reading the topic to its end,
  which holds the previous owner's last delta), not at a committed offset; committed offsets are
  written for monitoring (lag) only;
* on start the worker loads its newest snapshot — or, without one, the newest among
  ``group.bootstrap_dirs`` (a joining worker starts from the group's state, not cold) — and reads
  the topic on from the offset it records: what a crash lost is either in the topic (published:
  added back) or not (consumed again from the frontier by whoever owns the partition);
* a delta of ours that the group refused (another writer got its range first), a send that failed
  or a lost partition roll the worker back to its newest snapshot and the topic after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from consumers.kafka.errors import KafkaSourceError
from consumers.kafka.updates import UpdatesLog, updates_topic
from consumers.sources import PartitionedSource
from consumers.worker.offsets import Ledger
from consumers.worker.tracked import TrackedRunner
from pipeline.config import Config, config_hash
from pipeline.errors import SnapshotError
from pipeline.evaluation import WindowedMetrics
from pipeline.group.delta import encode
from pipeline.group.sync import REFUSED, UNREADABLE, ModelSync
from pipeline.learners.base import StateBundle
from state.checkpoint import Checkpointer, SnapshotResult
from state.snapshot import SnapshotStore

__all__ = ["GROUP_BUNDLE", "GroupCoordinator", "GroupRunner", "GroupSyncError", "group_meta"]

log = logging.getLogger(__name__)

GROUP_BUNDLE = "_group"


class GroupSyncError(KafkaSourceError):
    """The updates topic could not be written or read back in time (broker trouble: retried)."""


class GroupRunner(TrackedRunner):
    """A tracked runner whose snapshots also hold the fold of the updates topic (bundle ``_group``)."""

    def __init__(self, tracked: TrackedRunner, config_hash: str):
        super().__init__(tracked.runner, tracked.worker_id)
        self.sync = ModelSync(tracked.runner, tracked.worker_id, config_hash)

    def state(self) -> dict[str, StateBundle]:
        bundles = super().state()
        bundles[GROUP_BUNDLE] = StateBundle(meta=self.sync.state())
        return bundles

    def load_state(self, bundles: dict[str, StateBundle], cold=()) -> None:
        super().load_state({k: v for k, v in bundles.items() if k != GROUP_BUNDLE}, cold=cold)
        own = bundles.get(GROUP_BUNDLE)
        self.sync.load_state(own.meta if own is not None else {})


def group_meta(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The ``_group`` bundle's metadata recorded in a snapshot manifest (None: not a group snapshot)."""
    return manifest.get("learners", {}).get(GROUP_BUNDLE, {}).get("meta")


class GroupCoordinator:
    """The worker's snapshots and positions under ``[group]`` (see the module docstring).

    Parameters
    ----------
    store, checkpointer, ledger, source, make_runner, on_result, commit_timeout_ms
        As for :class:`~consumers.worker.commits.CommitCoordinator`.
    config
        The worker's configuration (``[group]``, ``[kafka]``).
    on_rollback
        Called after the worker rolled back on its own (a refused delta, a failed send), so the
        loop drops its buffered records and positions its partitions again.
    metrics
        The worker's :class:`~pipeline.metrics.StreamMetrics` (group counters), or None.
    """

    def __init__(
        self,
        store: SnapshotStore,
        checkpointer: Checkpointer,
        ledger: Ledger,
        source: PartitionedSource,
        make_runner: Callable[[], TrackedRunner],
        config: Config,
        on_result: Callable[[SnapshotResult], None] | None = None,
        commit_timeout_ms: int = 10_000,
        on_rollback: Callable[[], None] | None = None,
        metrics=None,
    ):
        self.store, self.checkpointer, self.ledger, self.source = store, checkpointer, ledger, source
        self.make_runner, self.config, self.on_result = make_runner, config, on_result
        self.commit_timeout_ms, self.on_rollback, self.metrics = commit_timeout_ms, on_rollback, metrics
        self.settings = config.group
        self.config_hash = config_hash(config)
        self.tracked = self._new_runner()
        self.updates: UpdatesLog | None = None
        self.pending = None  # no two-phase commit: a snapshot is valid once written
        self.confirmed_seq = 0
        self.commit_error: str | None = None
        self.commits = 0
        self.rollbacks = 0
        self.bootstrapped_from: str | None = None
        self._captured = (-1, -1)  # (records, updates offset) of the newest snapshot
        self._next_sync = 0.0
        self._applied_at_publish = 0
        self._interval_s = self.settings.publish_every_ms / 1000
        self._retry_at = 0.0
        self._rolling_back = False
        self.stats = {"sync_seconds": 0.0, "sent_bytes": 0, "received_bytes": 0, "published": 0}

    # ------------------------------------------------------------------ identity
    @property
    def worker_id(self) -> str:
        return self.ledger.worker_id

    @property
    def sync(self) -> ModelSync:
        return self.tracked.sync

    def _new_runner(self) -> GroupRunner:
        return GroupRunner(self.make_runner(), self.config_hash)

    # ------------------------------------------------------------------ start
    def restore(self) -> dict[str, Any] | None:
        """Open the updates topic, load the newest snapshot (ours, else a peer's) and read the topic on."""
        if self.updates is None:
            cfg = self.config
            self.updates = UpdatesLog(
                cfg.kafka.bootstrap_servers,
                updates_topic(cfg),
                self.settings.max_delta_bytes,
                dict(cfg.kafka.client),
            )
        manifest = self._load()
        first = self.updates.beginning_offset(self.commit_timeout_ms)
        if self.sync.fold.offset < first:
            raise SnapshotError(
                f"the updates topic {self.updates.topic} starts at offset {first:,} but this worker's state "
                f"continues from {self.sync.fold.offset:,}: deltas it needs were deleted (retention.ms); "
                "start it with an empty state dir and group.bootstrap_dirs to join from a peer's snapshot"
            )
        self._catch_up(to_end=True)
        return manifest

    def _load(self) -> dict[str, Any] | None:
        tracked = self._new_runner()
        self.bootstrapped_from = None
        manifest = self.checkpointer.restore(tracked)
        if manifest is not None and group_meta(manifest) is None:
            raise SnapshotError(
                f"snapshot {manifest['seq']:08d} in {self.config.snapshot.dir} was written without [group]: "
                "its events are not in the updates topic; start the group's workers with new state dirs"
            )
        self.confirmed_seq = manifest["seq"] if manifest is not None else 0
        if manifest is None:
            manifest = self._bootstrap(tracked)
        self.tracked = tracked
        self._applied_at_publish = tracked.counters["applied"]
        self.updates.seek(self.sync.fold.offset)
        self._captured = (tracked.counters["records"], self.sync.fold.offset)
        return manifest

    def _bootstrap(self, tracked: GroupRunner) -> dict[str, Any] | None:
        """Load the newest group snapshot among ``group.bootstrap_dirs`` (None: start from the topic's start)."""
        own = Path(self.config.snapshot.dir).resolve()
        best: tuple[int, SnapshotStore, int, str] | None = None
        for directory in self.settings.bootstrap_dirs:
            if Path(directory).resolve() == own:
                continue
            store = SnapshotStore(directory)
            for seq in reversed(store.seqs()):
                try:
                    manifest = store.read_manifest(seq)
                except SnapshotError as exc:
                    log.warning("bootstrap: %s snapshot %08d unreadable: %s", directory, seq, exc)
                    continue
                meta = group_meta(manifest)
                if meta is None or manifest.get("config_hash") != self.config_hash:
                    continue
                if best is None or int(meta.get("offset", 0)) > best[0]:
                    best = (int(meta.get("offset", 0)), store, seq, str(directory))
                break
        if best is None:
            log.info("no snapshot of the group found: following the updates topic from its start")
            return None
        offset, store, seq, directory = best
        try:
            manifest, bundles = store.read(seq)
            tracked.load_state(bundles)
        except (SnapshotError, KeyError, ValueError) as exc:
            log.warning(
                "bootstrap from %s snapshot %08d failed (%s): following the topic from its start",
                store,
                seq,
                exc,
            )
            return None
        # what this worker did itself starts now: counters and evaluation windows are its own
        runner = tracked.runner
        tracked.partitions = {}
        for key in runner.counters:
            runner.counters[key] = 0
        runner.dead_by_reason = {}
        runner._next_report = runner.report_every
        runner.metrics = {name: WindowedMetrics(wm.window) for name, wm in runner.metrics.items()}
        self.bootstrapped_from = f"{directory}#{seq:08d}"
        print(f"joined the group from {self.bootstrapped_from} (updates offset {offset:,})", flush=True)
        return manifest

    # ------------------------------------------------------------------ the topic
    def _catch_up(self, to_end: bool = False, wait_own: bool = False) -> None:
        """Read and judge deltas: what is there now, or up to the end, or until ours are back."""
        started = time.thread_time()
        updates, sync = self.updates, self.sync
        target = updates.end_offset(self.commit_timeout_ms) if to_end else -1
        deadline = time.monotonic() + self.settings.read_back_timeout_ms / 1000
        refused = False
        while True:
            must_wait = sync.fold.offset < target or (wait_own and sync.inflight)
            records = updates.read(timeout_ms=100 if must_wait else 0, max_records=256)
            for offset, value in records:
                refused |= self._receive(offset, value) == REFUSED
            if not records and not must_wait:
                break
            if must_wait and not records and time.monotonic() > deadline:
                self._account(started)
                raise GroupSyncError(
                    f"updates topic {updates.topic}: at offset {sync.fold.offset} of {target}, "
                    f"{len(sync.inflight)} own delta(s) not read back after {self.settings.read_back_timeout_ms} ms"
                )
        sync.rebase()
        if self.metrics is not None:
            self.metrics.group_frontier.set(sum(sync.fold.frontier.values()))
            high = updates.highwater()  # from the last fetch: no broker call here
            if high is not None:
                self.metrics.group_lag.set(max(0, high - sync.fold.offset))
        self._account(started)
        if refused:
            self._internal_rollback("a delta of ours was refused: another worker published that range first")

    def _receive(self, offset: int, value: bytes) -> str:
        self.stats["received_bytes"] += len(value or b"")
        if self.metrics is not None:
            self.metrics.group_bytes.labels(direction="received").inc(len(value or b""))
        outcome, delta = self.sync.receive_message(offset, value)
        if outcome == UNREADABLE:
            log.error(
                "updates topic %s offset %d is not a delta (%s): skipped", self.updates.topic, offset, delta
            )
            self._count(outcome)
            return outcome
        self._count("own" if outcome == "accepted" and self.sync.mine(delta) else outcome)
        if outcome in ("conflict", "incompatible", REFUSED):
            log.warning(
                "delta %s/%d of %s at offset %d: %s (ranges %s)",
                delta.incarnation,
                delta.seq,
                delta.author,
                offset,
                outcome,
                delta.ranges,
            )
        return outcome

    def _publish(self) -> None:
        """Publish what we learned since the last delta (if anything)."""
        started = time.thread_time()
        tracked = self.tracked
        delta = self.sync.take_delta(tracked.positions, tracked.partitions)
        if delta is not None:
            data = encode(delta)
            if len(data) > self.settings.max_delta_bytes:
                self._interval_s = max(0.01, self._interval_s / 2)
                self._account(started)
                raise GroupSyncError(
                    f"a delta of {len(data):,} bytes exceeds group.max_delta_bytes "
                    f"({self.settings.max_delta_bytes:,}); publishing every {self._interval_s * 1000:.0f} ms from now"
                )
            self.updates.publish(data, key=self.worker_id)
            self._applied_at_publish = tracked.counters["applied"]
            self.stats["sent_bytes"] += len(data)
            self.stats["published"] += 1
            self._count("published")
            if self.metrics is not None:
                self.metrics.group_bytes.labels(direction="sent").inc(len(data))
        self._account(started)

    def _exchange(self, wait_own: bool = False, to_end: bool = False) -> None:
        """Publish, (flush,) read the peers' deltas and ours back; roll back when that fails."""
        try:
            self._publish()
            if wait_own:
                self.updates.flush(self.settings.read_back_timeout_ms / 1000)
            self._catch_up(to_end=to_end, wait_own=wait_own)
            self.commit_error = None
        except GroupSyncError as exc:
            self.commit_error = str(exc)
            self._internal_rollback(str(exc))
            raise
        except Exception as exc:  # broker away: what was sent may be lost, our state may not hold it alone
            self.commit_error = f"updates topic: {exc!r}"
            self._internal_rollback(self.commit_error)
            raise GroupSyncError(self.commit_error) from exc

    def _count(self, outcome: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.group_deltas.labels(outcome=outcome).inc(n)

    def _account(self, started: float) -> None:
        # CPU time of the loop's thread (waiting for the broker costs none): what sync takes from learning
        spent = time.thread_time() - started
        self.stats["sync_seconds"] += spent
        if self.metrics is not None:
            self.metrics.group_seconds.inc(spent)

    # ------------------------------------------------------------------ steady state
    def drain(self) -> None:
        for result in self.checkpointer.take_results():
            if self.on_result is not None:
                self.on_result(result)
            if result.ok and result.manifest is not None:
                self.confirmed_seq = max(self.confirmed_seq, result.manifest["seq"])
                self._commit_for_monitoring(result.manifest)

    def _commit_for_monitoring(self, manifest: dict[str, Any]) -> None:
        """Committed offsets say how far the group got (lag dashboards); they never decide a start."""
        owned = set(self.source.owned())
        frontier = (group_meta(manifest) or {}).get("frontier", {})
        offsets = {k: int(v) for k, v in frontier.items() if k in owned}
        try:
            self.source.commit(
                offsets,
                {k: f"streamlearn-group/1 {self.worker_id}:{manifest['seq']}" for k in offsets},
                timeout_ms=self.commit_timeout_ms,
            )
            self.commits += 1
        except Exception as exc:  # only monitoring: never fatal
            log.info("committing offsets for monitoring failed: %r", exc)

    def step(self) -> None:
        """One turn: finished snapshots, the periodic exchange, a snapshot when due."""
        self.drain()
        now = time.monotonic()
        if now < self._retry_at:
            return
        try:
            if now >= self._next_sync or self._events_due():
                self._next_sync = now + self._interval_s
                self._exchange()
            if not self.checkpointer.in_flight and self._progressed() and self.checkpointer.due(self.tracked):
                self._snapshot(block=False)
        except GroupSyncError as exc:
            self._retry_at = time.monotonic() + 1.0
            log.warning("group sync failed: %s", exc)

    def _events_due(self) -> bool:
        every = self.settings.publish_every_events
        if not every:
            return False
        return self.tracked.counters["applied"] - self._applied_at_publish >= every

    def retry_now(self) -> None:
        self._retry_at = 0.0

    def request(self) -> None:
        self.checkpointer.request()

    def _progressed(self) -> bool:
        return (self.tracked.counters["records"], self.sync.fold.offset) != self._captured

    def _snapshot(self, block: bool) -> bool:
        """Publish and read everything back, then snapshot: the model is then the fold of the topic."""
        self._exchange(wait_own=True)
        tracked = self.tracked
        tracked.runner.positions.update(self.sync.fold.frontier)
        self._captured = (tracked.counters["records"], self.sync.fold.offset)
        ok = self.checkpointer.snapshot(tracked, block=block)
        if block:
            self.drain()
        return ok

    def checkpoint(self) -> bool:
        """Synchronously: everything published and read back, and a snapshot written (True)."""
        self.checkpointer.wait()
        self.drain()
        try:
            if not self._progressed():
                self._exchange(wait_own=True)
                if not self._progressed():
                    return True
            return self._snapshot(block=True)
        except GroupSyncError as exc:
            log.warning("checkpoint failed: %s", exc)
            return False

    def ahead(self) -> bool:
        return bool(self.sync.inflight) or self._progressed()

    # ------------------------------------------------------------------ rollback
    def _internal_rollback(self, why: str) -> None:
        if self._guarded_rollback(why) and self.on_rollback is not None:
            self.on_rollback()

    def _guarded_rollback(self, why: str) -> bool:
        """Roll back unless a rollback is under way (a failure inside one must not start another)."""
        if self._rolling_back:
            return False
        self._rolling_back = True
        try:
            self._rollback(why)
        finally:
            self._rolling_back = False
        return True

    def _rollback(self, why: str) -> None:
        """Reload the newest snapshot; the topic after it is read when the partitions are positioned
        again (:meth:`start_positions`) or at the next :meth:`step`."""
        log.warning("rolling back to the newest snapshot and the updates after it: %s", why)
        self.checkpointer.wait()
        self.drain()
        try:  # what is still in the producer lands (and is read back as a peer's) or fails
            self.updates.flush(5.0)
        except Exception as exc:
            log.warning("flushing the updates producer before the rollback: %r", exc)
        self.updates.failed.clear()
        self._load()
        self._next_sync = 0.0
        self.rollbacks += 1

    def rollback(self, why: str) -> bool:
        """Back to the newest snapshot and the topic after it (partitions lost or revoked unsaved)."""
        if not self.ahead():
            return False
        self._guarded_rollback(why)
        return True

    # ------------------------------------------------------------------ assignment
    def start_positions(self, keys: Iterable[str]) -> tuple[dict[str, int], list[str]]:
        """Each partition starts at the group's frontier, read after the topic's end (the previous
        owner's last delta); a partition the group never consumed starts at its first offset."""
        keys = list(keys)
        self._exchange(to_end=True)
        frontier = self.sync.fold.frontier
        seeks = {k: frontier[k] for k in keys if k in frontier}
        fresh = [k for k in keys if k not in frontier]
        if fresh:
            seeks.update(self.source.beginning_offsets(fresh, timeout_ms=self.commit_timeout_ms))
        return seeks, [k for k in keys if k not in seeks]

    def started(self, seeks: dict[str, int]) -> None:
        for key, pos in seeks.items():
            self.sync.claim(key, pos, self.tracked.partitions.get(key, {}))
            self.tracked.positions[key] = pos

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.sync.release(key)

    def close(self) -> None:
        if self.updates is not None:
            self.updates.close()
