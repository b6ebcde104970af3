"""The long-lived Kafka worker (docs/design.md §6–7): poll, cut, apply, snapshot, commit — exactly once in effect.

One loop on one thread: ``poll`` → offset-aligned micro-batches (:mod:`~consumers.worker.intake`,
:mod:`~consumers.worker.batcher`: the same log always gives the same batches, so a restarted
single-partition run ends in the state of an uninterrupted one) → ``Runner.process`` (the replay
code path) → snapshot and commit (:mod:`~consumers.worker.commits`; the protocol, and why Kafka's
commit is the commit point, in :mod:`~consumers.worker.offsets`). Rebalance callbacks run on
kafka-python's helper thread while the loop is inside ``poll``; a lock makes them wait for the
batch in hand.

* **Rebalance**: revoke → drop the revoked partitions' unprocessed records, snapshot and commit
  synchronously (if that fails, roll back to the last committed snapshot); assign → seek to our own
  position when the last commit was ours, else to the committed offset; lost → roll back.
* **Dead letters** are written inside ``Runner.process`` before the batch changes any state; when
  the dead-letter topic stays unavailable after the sink's retries, the batch (and every batch
  after it) waits, all partitions are paused, ``/readyz`` says why, and the batch is retried with
  backoff — a record is never skipped and no position passes it.
* **Broker away**: connecting and restoring retry with backoff forever (until a stop); polls return
  nothing, commits fail and are retried, ``/readyz`` answers 503; the state stays in memory. A
  :class:`~consumers.kafka.BrokerProbe` on its own thread asks the cluster for its metadata twice a
  second, so ``/readyz`` turns 503 within about a second of the broker's loss whatever the loop is
  blocked on; when the broker answers again, waiting retries (poll, commit, dead letters) run at once.
* **Backpressure**: processing is synchronous, so at most ``max_poll_records`` plus one partial
  block per partition wait in memory; a partition holding ``kafka.max_buffered_batches`` batches
  (while blocked on dead letters, say) is paused until drained.
* **Shutdown** (:meth:`Worker.stop`, wired to SIGTERM/SIGINT): the batch in hand finishes, a final
  snapshot is written and committed, the consumer leaves the group; exit code 0 only when the
  final snapshot is committed. With ``hard_exit`` a watchdog ends the process (exit 1) after
  ``shutdown_timeout_s``; the snapshot on disk is whole either way.

* **Many workers, one model** (``[group]``): the :class:`~consumers.worker.group.GroupCoordinator`
  takes the commit coordinator's place. Each worker publishes the deltas of what it learned to the
  model-updates topic and adds its peers'; a partition starts at the group's frontier; a snapshot
  is the fold of that topic (docs/scaling.md). Without ``[group]`` each worker keeps its own model.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from consumers.backoff import Backoff
from consumers.kafka import (
    BROKER_ERRORS,
    BrokerProbe,
    KafkaDeadLetterSink,
    consumer_settings,
    make_dead_letter_sink,
    make_decision_log,
    make_source,
)
from consumers.progress import Progress
from consumers.sources import PartitionedSource
from consumers.stack import Stack, build_stack
from consumers.worker.commits import CommitCoordinator
from consumers.worker.group import GroupCoordinator, GroupSyncError
from consumers.worker.health import apply_pauses, readiness, update_lag
from consumers.worker.intake import Intake
from consumers.worker.offsets import Ledger
from consumers.worker.options import WorkerOptions, WorkerReport
from consumers.worker.tracked import TrackedRunner
from consumers.worker.wiring import open_checkpointer, open_ops_server, open_serving_server
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.metrics import StreamMetrics

__all__ = ["Worker", "WorkerOptions", "WorkerReport"]

log = logging.getLogger(__name__)


class Worker:
    """A consumer-group member that applies every event of its partitions exactly once in effect.

    Parameters
    ----------
    config
        The validated configuration; ``snapshot.dir`` must be set and ``snapshot.keep >= 2``.
    options
        Process-level options (:class:`WorkerOptions`).
    observers
        Extra runner observers (e.g. a benchmark's freshness probe).
    """

    def __init__(self, config: Config, options: WorkerOptions | None = None, observers=()):
        if not config.snapshot.dir:
            raise ConfigError("snapshot.dir must be set: the worker's exactly-once effect rests on snapshots")
        if config.snapshot.keep < 2:
            raise ConfigError(
                f"invalid value {config.snapshot.keep} for 'snapshot.keep': the worker needs >= 2"
            )
        consumer_settings(config.kafka.client)  # fail fast on unknown client keys
        self.config, self.options = config, options or WorkerOptions()
        self.metrics = StreamMetrics()
        self._observers = list(observers)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # ends a retry wait early: stop, or the broker is back
        self._ready_lock = threading.Lock()  # the loop and the broker probe both update readiness
        self._in_loop = False
        self.probe: BrokerProbe | None = None
        self._done = threading.Event()
        self._stop_reason: str | None = None
        self._stopping = False
        self._final_checkpoint_done = False
        self._ready = (False, "starting")
        self.intake = Intake(config.source.batch_size, config.source.max_wait_ms)
        self._unpositioned: set[str] = set()
        self._position_retry_at = 0.0
        self._poll_error: str | None = None
        self._lag: dict[str, int] = {}
        self._next_lag = 0.0
        self._last_activity = time.monotonic()
        self._rebalances = 0
        self._assigned_once = False
        self._resumed_from: int | None = None
        self.server = None
        self.serving = None  # the scoring/decision API (consumers.serving.ServingServer), when on
        self.stack: Stack | None = None
        self.source: PartitionedSource | None = None
        self.commits: CommitCoordinator | None = None
        self.sink: KafkaDeadLetterSink | None = None

    # ------------------------------------------------------------------ control
    def stop(self, reason: str = "stop requested") -> None:
        """Finish the batch in hand, snapshot, commit and exit (safe from signal handlers and threads)."""
        if self._stop_reason is None:
            self._stop_reason = reason
            if self.options.hard_exit:
                threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        self._stop.set()
        self._wake.set()

    def request_snapshot(self) -> None:
        """Snapshot and commit after the current batch (SIGUSR1)."""
        if self.commits is not None:
            self.commits.request()

    def _watchdog(self) -> None:
        if not self._done.wait(self.options.shutdown_timeout_s):
            log.error("shutdown took longer than %.0f s: exiting hard", self.options.shutdown_timeout_s)
            os._exit(1)

    @property
    def ready(self) -> tuple[bool, str]:
        return self._ready

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        if (ready, reason) != self._ready:
            if not ready:
                log.warning("not ready: %s", reason)
            self._ready = (ready, reason)
        if self.server is not None:
            self.server.set_ready(ready, reason)
        else:
            self.metrics.ready.set(1 if ready else 0)

    # ------------------------------------------------------------------ run
    def run(self) -> WorkerReport:
        """Consume until stopped (or idle, with ``idle_exit_s``); returns what happened."""
        started = time.monotonic()
        code = 1
        try:
            self._open()
            if self._connect():
                self._loop()
            code = self._shutdown(started)
        except BaseException:
            # after a failure midway through a batch the state is not consistent: the newest
            # snapshot stays the truth, and leaving the group must not write another one
            self._final_checkpoint_done = True
            raise
        finally:
            self._close()
            self._done.set()
        return self._report(code, time.monotonic() - started)

    def _open(self) -> None:
        cfg = self.config
        self.server = open_ops_server(cfg, self.options, self.metrics)
        self.serving = open_serving_server(cfg, self.options)
        self._set_ready(False, "starting")
        self.probe = BrokerProbe(
            cfg.kafka.bootstrap_servers, cfg.kafka.client, on_change=self._on_broker_change
        ).start()
        store, checkpointer = open_checkpointer(cfg, self.options)
        self.source = make_source(cfg, self._on_assign, self._on_revoke, self._on_lost)
        self.sink = make_dead_letter_sink(cfg, self.options)
        self._ledger = Ledger(cfg.snapshot.dir)
        if cfg.group.enabled:
            self.commits = GroupCoordinator(
                store,
                checkpointer,
                self._ledger,
                self.source,
                self._make_runner,
                cfg,
                on_result=self.metrics.observe_snapshot,
                commit_timeout_ms=self.options.commit_timeout_ms,
                on_rollback=self._after_group_rollback,
                metrics=self.metrics,
            )
        else:
            self.commits = CommitCoordinator(
                store,
                checkpointer,
                self._ledger,
                self.source,
                self._make_runner,
                on_result=self.metrics.observe_snapshot,
                commit_timeout_ms=self.options.commit_timeout_ms,
            )

    def _make_runner(self) -> TrackedRunner:
        # the replay's stack (metrics, drift monitor, extra observers) over the process's registry;
        # called again on rollback, so stateful observers restart with the restored model
        self.stack = build_stack(
            self.config,
            dead_letters=self.sink,
            metrics=self.metrics,
            observers=self._observers,
            serving=self.serving.holder if self.serving is not None else None,
        )
        return TrackedRunner(self.stack.runner, self._ledger.worker_id)

    @property
    def tracked(self) -> TrackedRunner:
        return self.commits.tracked

    def _connect(self) -> bool:
        backoff = Backoff(0.2, 5.0)
        while not self._stop.is_set():
            try:
                self.source.connect()
                manifest = self.commits.restore()
                if self.serving is not None:
                    if self.serving.decisions is None:
                        self.serving.decisions = make_decision_log(self.config)
                    self.stack.publisher.publish(self.stack.runner)  # the restored model serves at once
                self.source.subscribe()
            except BROKER_ERRORS as exc:
                self._set_ready(False, f"broker unreachable ({self.config.kafka.bootstrap_servers}): {exc!r}")
                self._wake.clear()
                self._wake.wait(backoff.next_delay())  # woken early by a stop or the broker's return
                continue
            if manifest is not None and getattr(self.commits, "bootstrapped_from", None) is None:
                self._resumed_from = manifest["seq"]
                print(
                    f"resumed from snapshot {manifest['seq']} ({self.tracked.counters['applied']:,} events applied)",
                    file=sys.stderr,
                )
            return True
        return False

    def _on_broker_change(self, reachable: bool) -> None:
        """The probe's thread: readiness now, and waiting retries at once when the broker is back."""
        if reachable:
            self._wake.set()
        self._update_ready()

    def _retry_wait(self, seconds: float) -> None:
        self._wake.clear()
        if not self._stop.is_set():
            self._wake.wait(seconds)
        if self.probe is not None and self.probe.reachable:
            self.commits.retry_now()
            self.intake.retry_now()

    def _loop(self) -> None:
        progress = Progress(enabled=self.config.source.progress and self.options.progress)
        self._last_activity = time.monotonic()
        backoff = Backoff(0.2, 2.0)
        self._in_loop = True
        try:
            while not self._stop.is_set():
                if self._idle_due():
                    self._stop_reason = self._stop_reason or "idle"
                    break
                try:
                    parts = self.source.poll_partitions(
                        self.intake.next_due_ms(self.config.kafka.poll_timeout_ms)
                    )
                    self._poll_error = self.source.poll_error
                except BROKER_ERRORS as exc:
                    self._poll_error = f"poll failed: {exc!r}"
                    parts = []
                if self._poll_error is None:
                    backoff.reset()
                else:
                    log.warning("%s", self._poll_error)
                    self._retry_wait(backoff.next_delay())
                with self._lock:
                    owned = set(self.source.owned()) - self._unpositioned  # unpositioned: pre-seek records
                    if self.intake.accept(parts, owned):
                        self._last_activity = time.monotonic()
                    self.intake.apply(self.tracked, self.source.caught_up, self._stop.is_set)
                    self.commits.step()
                    self._housekeeping()
                c = self.tracked.counters
                where = f"lag {sum(self._lag.values()):,} | {len(self.source.owned())} partitions"
                progress.update(
                    c["records"], c["applied"], c["dead_letters"], where, duplicates=c["duplicates"]
                )
        finally:
            self._in_loop = False
            progress.close()

    def _idle_due(self) -> bool:
        idle = self.options.idle_exit_s
        return (
            idle is not None
            and self._assigned_once  # joining may wait for a dead member's session to expire
            and time.monotonic() - self._last_activity >= idle
            and self.intake.idle()
            and self.commits.pending is None
        )

    # ------------------------------------------------------------------ rebalance (helper thread)
    def _on_assign(self, keys: list[str]) -> None:
        with self._lock:
            self._assigned_once = True
            self._next_lag = 0.0  # report the new partitions' lag at once
            self._rebalances += 1
            self._last_activity = time.monotonic()
            self._position(keys)

    def _position(self, keys) -> None:
        keys = list(keys)
        if not keys:
            return
        try:
            seeks, default = self.commits.start_positions(keys)
            self.source.seek(seeks)
            self.source.seek_to_default(default)
        except (*BROKER_ERRORS, GroupSyncError) as exc:
            log.warning("cannot position %s yet (%r): paused until the broker answers", keys, exc)
            self._unpositioned.update(keys)
            self.source.pause(keys)
            self._position_retry_at = time.monotonic() + 1.0
            return
        self.commits.started(seeks)
        for key in keys:
            self.intake.position(key, seeks.get(key))
            self._unpositioned.discard(key)
        log.info("assigned %s: start %s, default %s", keys, seeks, default)

    def _drop(self, keys) -> None:
        self.intake.drop(keys)
        self._unpositioned.difference_update(keys)

    def _on_revoke(self, keys: list[str]) -> None:
        with self._lock:
            self._rebalances += 1
            self._last_activity = time.monotonic()
            self._drop(keys)
            if self._final_checkpoint_done:
                pass  # leaving the group at shutdown: the final snapshot is already written (and committed)
            elif not self.commits.checkpoint() and not self._stopping:
                self._rollback(f"partitions {keys} revoked before their snapshot was committed", keys)
            self.commits.forget(keys)

    def _on_lost(self, keys: list[str]) -> None:
        with self._lock:
            self._rebalances += 1
            self._last_activity = time.monotonic()
            self._drop(keys)
            self._rollback(f"partitions {keys} lost (group membership expired)", keys)
            self.commits.forget(keys)

    def _after_group_rollback(self) -> None:
        """The group coordinator rolled back on its own: re-position every partition (soon, not here)."""
        self.intake.drop()
        owned = list(self.source.owned())
        self._unpositioned.update(owned)
        if owned:
            self.source.pause(owned)
        self._position_retry_at = 0.0

    def _rollback(self, why: str, leaving) -> None:
        if not self.commits.rollback(why):
            return
        self.intake.drop()
        still = [k for k in self.source.owned() if k not in set(leaving)]
        self._position(still)

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.stack is not None and self.stack.publisher is not None:
            self.stack.publisher.publish_if_due(self.stack.runner)
        if self._unpositioned and now >= self._position_retry_at:
            self._position(sorted(self._unpositioned))
        self._apply_pauses()
        if now >= self._next_lag:
            self._next_lag = now + self.options.lag_every_s
            self._update_lag()
        self._update_ready()

    def _apply_pauses(self) -> None:
        limit = self.config.kafka.max_buffered_batches * self.config.source.batch_size
        apply_pauses(self.source, self.intake.batcher, limit, bool(self.intake.blocked), self._unpositioned)

    def _update_lag(self) -> None:
        if self.source.connected():
            self._lag = update_lag(self.source, self.tracked.positions, self.metrics, self._lag)

    def _update_ready(self) -> None:
        if not self._in_loop:  # connecting and stopping set readiness themselves
            return
        reachable = self.probe.reachable if self.probe is not None else None
        with self._ready_lock:
            self._set_ready(
                *readiness(
                    stopping=self._stopping,
                    connected=self.source.connected() if reachable is None else reachable,
                    problems=(self.intake.blocked, self._poll_error, self.commits.commit_error),
                    bootstrap=self.config.kafka.bootstrap_servers,
                )
            )

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self, started: float) -> int:
        self._stopping = True
        with self._ready_lock:
            self._set_ready(False, "stopping")
        if self.commits is None or self.source is None:
            return 1
        deadline = time.monotonic() + 0.6 * self.options.shutdown_timeout_s
        backoff = Backoff(0.2, 2.0)
        with self._lock:
            while not (ok := self.commits.checkpoint()) and time.monotonic() < deadline:
                time.sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))
            self._final_checkpoint_done = True
        if not ok:
            print(
                f"final snapshot not committed ({self.commits.commit_error or 'snapshot failed'}): "
                f"the events since snapshot {self.commits.confirmed_seq} are consumed again on restart",
                file=sys.stderr,
            )
        return 0 if ok else 1

    def _close(self) -> None:
        if self.probe is not None:
            self.probe.stop()
        if self.source is not None:
            try:
                self.source.close(timeout_ms=5000)
            except Exception as exc:  # leaving the group is best effort once the state is safe
                log.warning("closing the consumer failed: %r", exc)
        if self.commits is not None:
            self.commits.checkpointer.close()
            if isinstance(self.commits, GroupCoordinator):
                self.commits.close()
        if self.sink is not None:
            try:
                self.sink.close()
            except Exception as exc:
                log.warning("closing the dead-letter producer failed: %r", exc)
        if self.serving is not None:
            self.serving.stop()
        if self.server is not None:
            self.server.stop()

    def _report(self, code: int, seconds: float) -> WorkerReport:
        tracked = self.commits.tracked if self.commits else None
        summary = tracked.summary(seconds) if tracked else {}
        return WorkerReport(
            exit_code=code,
            reason=self._stop_reason or ("error" if code else "stopped"),
            worker_id=self.commits.worker_id if self.commits else "",
            seconds=seconds,
            records_this_run=self.intake.received,
            summary=summary,
            partitions=dict(tracked.partitions) if tracked else {},
            positions=dict(tracked.positions) if tracked else {},
            confirmed_seq=self.commits.confirmed_seq if self.commits else 0,
            commits=self.commits.commits if self.commits else 0,
            rollbacks=self.commits.rollbacks if self.commits else 0,
            rebalances=self._rebalances,
            resumed_from=self._resumed_from,
            extra={"group": self._group_report()} if isinstance(self.commits, GroupCoordinator) else {},
        )

    def _group_report(self) -> dict:
        g = self.commits
        fold = g.sync.fold
        return {
            "bootstrapped_from": g.bootstrapped_from,
            "updates_offset": fold.offset,
            "frontier": dict(fold.frontier),
            "counts": {k: dict(v) for k, v in fold.counts.items()},
            "outcomes": dict(g.sync.outcomes),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in g.stats.items()},
        }
