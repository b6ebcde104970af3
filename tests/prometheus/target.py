"""The scrape target of the Prometheus tests: a real ``streamlearn worker`` on a simulated, drifting stream.

:class:`WorkerTarget` starts the real worker process (``python -m consumers.cli worker``: the
same entry point, and so the same :func:`consumers.stack.build_stack`, as production) with every
learner family (FTRL, error memory, neural, a bandit policy) and a drift monitor, on a topic of a
real broker. Once Prometheus has scraped it, :meth:`WorkerTarget.begin` produces the simulator's
stream (an abrupt drift, 1% invalid records) at a steady rate with event times near "now", so
freshness stays realistic. The stream is an application's log, impressions with their clicks
apart (``feedback = "delayed"``, clicks 0.2 s later at the median), and the worker joins them
(``[join]``, a 2 s window), so that the join's panels have data too. A worker that missed an observer (drift, metrics, snapshots) leaves its
panels without data, and the tests fail.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from pipeline.simulate import Drift, SimConfig, Simulator
from tests.kafka.broker import KafkaBroker
from tests.kafka.workers import WorkerProcess, WorkerProcesses, http_get, worker_config

__all__ = ["LEARNERS", "WorkerTarget"]

LEARNERS = ("ftrl", "error_memory", "neural", "beta_ts")
PARTITIONS = 2

_DRIFT = """
[join]
enabled = true
strategy = "fake_negative"
window_s = 2.0
allowed_lateness_ms = 500
[evaluation]
window = 2000
[drift]
features = ["price", "device", "category"]
warmup_events = 2000
reference_events = 2000
window_events = 1000
"""


class WorkerTarget:
    """A worker consuming the simulator's stream at ``rate`` events/s, serving /metrics on loopback.

    Parameters
    ----------
    broker
        The session's real Kafka broker.
    workdir
        Configuration, state directory and the worker's log.
    n_events, rate
        Stream length and events per second once :meth:`begin` is called.
    drift_at
        An abrupt drift at this event, so that drift alarms (and their alert) fire.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        workdir: Path,
        n_events: int = 90_000,
        rate: float = 4000.0,
        drift_at: int = 15_000,
        learners: tuple[str, ...] = LEARNERS,
    ):
        self.broker, self.n_events, self.rate = broker, n_events, rate
        self.topic = broker.create_topic(partitions=PARTITIONS)
        self.sim = Simulator(
            SimConfig(
                seed=3,
                preference_scale=2.0,
                popularity_scale=1.2,
                mean_gap_ms=1000.0 / rate,
                start_ts=int(time.time() * 1000),
                drifts=(Drift(drift_at, "abrupt"),),
                feedback="delayed",
                delay_median_s=0.2,
            )
        )
        config = worker_config(
            workdir / "worker.toml",
            broker.bootstrap,
            [self.topic],
            f"g-prometheus-{time.monotonic_ns()}",
            workdir / "state",
            every_events=0,
            every_seconds=1.0,
            learners="".join(f"[[learners]]\nkind = {json.dumps(k)}\n" for k in learners) + _DRIFT,
        )
        self.procs = WorkerProcesses(workdir)
        self.worker: WorkerProcess = self.procs.start("worker", config)
        self.produced = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="stream-producer", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.worker.metrics_port}"

    def ready(self) -> bool:
        """The worker is connected and owns its partitions (``/readyz`` answers 200)."""
        if self.worker.poll() is not None:
            raise AssertionError(f"the worker exited ({self.worker.returncode})\n{self.worker.log_tail()}")
        return http_get(self.worker.url("/readyz"))[0] == 200

    def begin(self) -> None:
        """Start producing the stream (call once Prometheus has scraped the idle worker)."""
        self._thread.start()

    def applied(self) -> int:
        """Events the worker has applied, read from its own /metrics."""
        status, body = http_get(self.worker.url("/metrics"))
        if status != 200:
            return 0
        m = re.search(r'^streamlearn_events_total\{outcome="applied"\} (\S+)$', body, re.M)
        return int(float(m.group(1))) if m else 0

    def _produce(self) -> None:
        producer = self.broker.producer()
        try:
            started = time.monotonic()
            for chunk in self.sim.json_chunks(self.n_events, invalid_fraction=0.01):
                for line in chunk.lines:
                    producer.send(self.topic, value=line, partition=self.produced % PARTITIONS)
                    self.produced += 1
                if self._stop.is_set():
                    break
                ahead = self.produced / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush()
        except BaseException as exc:  # surfaced by stop() in the test's thread
            self.error = exc
        finally:
            producer.close(timeout=5)
            self.done.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.procs.close()
        if self.error is not None:
            raise RuntimeError(f"producing the stream failed: {self.error!r}") from self.error
