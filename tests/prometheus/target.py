"""A scrape target for the Prometheus tests: the simulator's stream replayed through the real pipeline.

:class:`ReplayTarget` runs, on a background thread, what a worker runs per micro-batch — the
:class:`~pipeline.runner.Runner` with every learner family (FTRL, error memory, neural, a bandit
policy), :class:`~pipeline.metrics.StreamMetrics`, the :class:`~pipeline.drift.DriftMonitor` and a
:class:`~state.checkpoint.Checkpointer` — over the simulator's stream (with a drift and invalid
records), throttled to a steady rate, and serves ``/metrics`` with the real
:class:`~consumers.http_server.OpsServer`. Only the Kafka source is missing, hence
``streamlearn_consumer_lag_records``: the tests list it as needing the worker.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from consumers.http_server import OpsServer
from pipeline.config import config_hash, load_config
from pipeline.drift import DriftMonitor, DriftSettings
from pipeline.metrics import StreamMetrics
from pipeline.runner import RawBatch, Runner
from pipeline.simulate import Drift, SimConfig, Simulator
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore

__all__ = ["LEARNERS", "NEEDS_WORKER", "ReplayTarget", "SnapshotMetrics"]

LEARNERS = ("ftrl", "error_memory", "neural", "beta_ts")
#: metrics only a Kafka worker produces, with the reason (the tests accept no data for these)
NEEDS_WORKER = {"streamlearn_consumer_lag_records": "consumer lag exists only with a Kafka source"}


class SnapshotMetrics:
    """Runner observer that turns a checkpointer's results into the snapshot metrics.

    The worker must do the same after each batch (``checkpointer.take_results()``).
    """

    def __init__(self, checkpointer: Checkpointer, metrics: StreamMetrics):
        self.checkpointer = checkpointer
        self.metrics = metrics

    def on_batch(self, runner, result) -> None:
        for r in self.checkpointer.take_results():
            self.metrics.snapshot_duration.observe(r.duration_s)
            if r.ok:
                self.metrics.snapshot_last_success.set(time.time())
            else:
                self.metrics.snapshot_failures.inc()


class ReplayTarget:
    """The pipeline over a simulated stream at ``rate`` events/s, serving /metrics on loopback.

    Parameters
    ----------
    state_dir
        Where the checkpointer writes its snapshots (one per ``snapshot_every_s`` seconds).
    n_events, rate, batch
        Stream length, events per second, events per micro-batch.
    drift_at
        An abrupt drift at this event, so that drift alarms (and their alert) fire.
    """

    def __init__(
        self,
        state_dir: str | Path,
        n_events: int = 40_000,
        rate: float = 4000.0,
        batch: int = 500,
        drift_at: int = 15_000,
        learners: tuple[str, ...] = LEARNERS,
        snapshot_every_s: float = 1.0,
    ):
        self.n_events, self.rate, self.batch = n_events, rate, batch
        now_ms = int(time.time() * 1000)
        # event times end near "now", so that freshness (apply time - event time) stays realistic
        self.sim = Simulator(
            SimConfig(
                seed=3,
                preference_scale=2.0,
                popularity_scale=1.2,
                mean_gap_ms=1000.0 / rate,
                start_ts=now_ms,
                drifts=(Drift(drift_at, "abrupt"),),
            )
        )
        config = load_config(overrides={"learners": list(learners), "evaluation": {"window": 2000}})
        self.metrics = StreamMetrics(model_every_s=0.5)
        self.drift = DriftMonitor(
            DriftSettings(
                features=("price", "device", "category"),
                warmup_events=2000,
                reference_events=2000,
                window_events=1000,
            ),
            self.metrics,
        )
        self.checkpointer = Checkpointer(
            SnapshotStore(state_dir, keep=2),
            config_hash(config),
            every_seconds=snapshot_every_s,
            background=True,
            catalog=False,
            drift_source=self.drift.take_events,
        )
        self.runner = Runner.from_config(
            config,
            observers=[
                self.metrics,
                self.drift,
                self.checkpointer,
                SnapshotMetrics(self.checkpointer, self.metrics),
            ],
        )
        self.server = OpsServer(self.metrics, port=0)
        self._stop = threading.Event()
        #: set by the test once Prometheus has scraped the target: a counter that first appears
        #: already incremented shows no increase() to Prometheus, so nothing may happen before
        self.begin = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="replay-target", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def start(self) -> None:
        self.server.start()
        self.server.set_ready(True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.begin.wait(120)
            started = time.monotonic()
            read = 0
            for i, batch in enumerate(
                self.sim.batches(self.n_events, chunk_size=self.batch, invalid_fraction=0.01)
            ):
                if self._stop.is_set():
                    break
                self.runner.process(RawBatch(arrow=batch, positions={"simulator": i + 1}))
                read += batch.num_rows
                ahead = read / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # surfaced by stop() in the test's thread
            self.error = exc
        finally:
            self.done.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.checkpointer.close()
        finally:
            self.server.stop()
        if self.error is not None:
            raise RuntimeError(f"the replay target failed: {self.error!r}") from self.error
