"""Every Prometheus metric of streamlearn, defined in one place (docs/design.md §8).

Names follow Prometheus conventions: the ``streamlearn_`` prefix, units in the name, ``_total``
for counters. Label sets are small and fixed — learner, policy, stage, reason, signal names —
never user or item ids. Dashboards and alert rules may only use names listed in
:data:`METRIC_NAMES` (a test checks this).

:class:`StreamMetrics` owns a registry and is a runner observer: after every micro-batch it
updates throughput, dead letters, stage timings, freshness and (at most once per
``model_every_s`` seconds, since AUC costs a sort of the window) the model-quality gauges.

Examples
--------
>>> m = StreamMetrics()
>>> m.events.labels(outcome="applied").inc(3)
>>> b"streamlearn_events_total{outcome=\\"applied\\"} 3.0" in m.exposition()
True
"""

from __future__ import annotations

import math
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from pipeline.observers import GaugeSource

# `_created` timestamps double the series count and no dashboard uses them
disable_created_metrics()

__all__ = ["GROUP_OUTCOMES", "METRIC_NAMES", "SnapshotMetrics", "StreamMetrics"]

#: ``streamlearn_group_deltas_total{outcome}``: the worker's own (published; own = read back
#: accepted), its peers' by the fold's verdict (pipeline/group/fold.py), and the sync's own
GROUP_OUTCOMES = (
    "published",
    "own",
    "accepted",
    "duplicate",
    "conflict",
    "incompatible",
    "refused",
    "unreadable",
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
    86400.0,
)


class StreamMetrics:
    """The metrics of one worker or replay, in their own registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, model_every_s: float = 1.0, version: str = ""
    ):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.model_every_s = model_every_s
        self._last_model_update = -math.inf
        self.events = Counter("streamlearn_events", "Records by outcome.", ["outcome"], registry=r)
        self.dead_letters = Counter(
            "streamlearn_dead_letter", "Invalid records by reason.", ["reason"], registry=r
        )
        self.batch_duration = Histogram(
            "streamlearn_batch_duration_seconds",
            "Micro-batch time by stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "streamlearn_batch_size_events",
            "Records per micro-batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.freshness = Histogram(
            "streamlearn_event_freshness_seconds",
            "Apply time minus event time.",
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamlearn_consumer_lag_records",
            "Records behind the end of each partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_auc = Gauge(
            "streamlearn_model_auc", "Windowed prequential AUC.", ["learner", "window"], registry=r
        )
        self.model_logloss = Gauge(
            "streamlearn_model_logloss", "Windowed prequential logloss.", ["learner", "window"], registry=r
        )
        self.model_calibration = Gauge(
            "streamlearn_model_calibration_ratio",
            "Sum of predictions over sum of labels (window).",
            ["learner"],
            registry=r,
        )
        self.policy_value = Gauge(
            "streamlearn_policy_value_estimate",
            "Off-policy value estimate.",
            ["policy", "estimator"],
            registry=r,
        )
        self.bandit_reward_rate = Gauge(
            "streamlearn_bandit_reward_rate",
            "Mean reward of the last W events a policy learned.",
            ["policy", "window"],
            registry=r,
        )
        self.bandit_arms = Gauge("streamlearn_bandit_arms", "Arms known to a policy.", ["policy"], registry=r)
        self.bandit_drift_resets = Counter(
            "streamlearn_bandit_drift_resets",
            "Times a policy's own drift watch sent its statistics back to the prior.",
            ["policy"],
            registry=r,
        )
        self.drift_score = Gauge(
            "streamlearn_drift_score", "Current drift statistic.", ["signal", "method"], registry=r
        )
        self.drift_detected = Counter(
            "streamlearn_drift_detected", "Drift alarms raised.", ["signal", "detector"], registry=r
        )
        self.error_memory_entries = Gauge(
            "streamlearn_error_memory_entries", "Non-empty error-memory buckets.", ["learner"], registry=r
        )
        self.error_memory_compensation = Gauge(
            "streamlearn_error_memory_mean_abs_compensation",
            "Mean |compensation| of the last batch.",
            ["learner"],
            registry=r,
        )
        self.embedding_rows = Gauge(
            "streamlearn_embedding_rows", "Rows in use per embedding table.", ["table"], registry=r
        )
        self.embedding_evictions = Counter(
            "streamlearn_embedding_evictions", "Embedding rows evicted.", ["table"], registry=r
        )
        self.snapshot_duration = Histogram(
            "streamlearn_snapshot_duration_seconds",
            "Time to write a snapshot.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.snapshot_last_success = Gauge(
            "streamlearn_snapshot_last_success_timestamp_seconds",
            "Unix time of the last good snapshot.",
            registry=r,
        )
        self.snapshot_failures = Counter(
            "streamlearn_snapshot_failures", "Snapshots that failed.", registry=r
        )
        self.join_events = Counter(
            "streamlearn_join_events",
            "Join outcomes: exposures, outcomes, attributed, orphans, after_window, evicted, closed, positives, ...",
            ["outcome"],
            registry=r,
        )
        self.join_open = Gauge(
            "streamlearn_join_open_exposures", "Exposures waiting for outcomes.", registry=r
        )
        self.join_open_bytes = Gauge(
            "streamlearn_join_open_bytes", "Bytes held by the open exposures.", registry=r
        )
        self.join_pending = Gauge(
            "streamlearn_join_pending_outcomes", "Outcomes that came before their exposure.", registry=r
        )
        self.join_latency = Histogram(
            "streamlearn_join_latency_seconds",
            "Event time from an exposure to its final label (its window and the watermark's lateness).",
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.group_deltas = Counter(
            "streamlearn_group_deltas",
            "Deltas of the model-updates topic by outcome: published, own, accepted, duplicate, conflict, refused, ...",
            ["outcome"],
            registry=r,
        )
        self.group_bytes = Counter(
            "streamlearn_group_sync_bytes",
            "Bytes of model deltas sent and received through the updates topic.",
            ["direction"],
            registry=r,
        )
        self.group_seconds = Counter(
            "streamlearn_group_sync_seconds",
            "Time the worker spent making, sending, reading and adding model deltas.",
            registry=r,
        )
        self.group_frontier = Gauge(
            "streamlearn_group_frontier_records",
            "Source records (all partitions) whose effect the group's model, as this worker holds it, contains.",
            registry=r,
        )
        self.group_lag = Gauge(
            "streamlearn_group_updates_lag",
            "Deltas in the updates topic that this worker has not read yet.",
            registry=r,
        )
        # every label value exported from the start (at 0), so that rates and dashboards have series
        for outcome in GROUP_OUTCOMES:
            self.group_deltas.labels(outcome=outcome)
        for direction in ("sent", "received"):
            self.group_bytes.labels(direction=direction)
        self.ready = Gauge("streamlearn_ready", "1 when the worker is consuming, else 0.", registry=r)
        self.build_info = Gauge(
            "streamlearn_build_info", "Version of the running code.", ["version"], registry=r
        )
        self.build_info.labels(version=version or _version()).set(1)
        self._named = self._by_name()

    # ------------------------------------------------------------------------------ observer
    def on_batch(self, runner: Any, result: Any) -> None:
        applied = result.applied
        if applied:
            self.events.labels(outcome="applied").inc(applied)
        if result.duplicates:
            self.events.labels(outcome="duplicate").inc(result.duplicates)
        if result.late:
            self.events.labels(outcome="late").inc(result.late)
        if result.dead_letters:
            self.events.labels(outcome="dead_letter").inc(len(result.dead_letters))
            for d in result.dead_letters:
                self.dead_letters.labels(reason=d.reason).inc()
        self.batch_size.observe(result.records)
        for stage, seconds in result.durations.items():
            self.batch_duration.labels(stage=stage.split(":", 1)[0]).observe(seconds)
        joiner = getattr(runner, "joiner", None)
        if joiner is not None:
            self._observe_join(joiner, result)
        effect_ts = result.events.ts if result.first_effect_ts is None else result.first_effect_ts
        if len(effect_ts):
            lag_s = (result.applied_at_ms - effect_ts) / 1000.0
            # a histogram observation per event would be per-event Python; observe a fixed sample
            for v in lag_s[:: max(1, len(lag_s) // 64)].tolist():
                self.freshness.observe(max(v, 0.0))
        now = time.monotonic()
        if now - self._last_model_update >= self.model_every_s:
            self._last_model_update = now
            self.update_models(runner)

    def _observe_join(self, joiner: Any, result: Any) -> None:
        for name, value in joiner.counters.items():
            self.set_named("streamlearn_join_events_total", {"outcome": name}, value)
        g = joiner.gauges()
        self.join_open.set(g["open"])
        self.join_open_bytes.set(g["open_bytes"])
        self.join_pending.set(g["pending"])
        final = result.events
        if len(final):
            waited_s = (joiner.max_ts - final.ts) / 1000.0  # sampled, as the freshness histogram
            for v in waited_s[:: max(1, len(final) // 64)].tolist():
                self.join_latency.observe(max(v, 0.0))

    def update_models(self, runner: Any) -> None:
        for name, wm in runner.metrics.items():
            if wm.seen == 0:
                continue
            m = wm.get()
            window = str(wm.window)
            if not math.isnan(m["auc"]):
                self.model_auc.labels(learner=name, window=window).set(m["auc"])
            if not math.isnan(m["logloss"]):
                self.model_logloss.labels(learner=name, window=window).set(m["logloss"])
            if not math.isnan(m["calibration"]):
                self.model_calibration.labels(learner=name).set(m["calibration"])
        for learner in runner.learners:
            if isinstance(learner, GaugeSource):
                for metric, labels, value in learner.gauges():
                    self.set_named(metric, labels, value)

    def observe_snapshot(self, result: Any) -> None:
        """Count one finished snapshot (a :class:`state.checkpoint.SnapshotResult`).

        The one route for snapshot metrics: the replay's :class:`SnapshotMetrics` observer and the
        worker's commit coordinator both hand every result they drain to this method.
        """
        if result.ok:
            self.snapshot_duration.observe(result.duration_s)
            self.snapshot_last_success.set(time.time())
        else:
            self.snapshot_failures.inc()

    def set_named(self, metric: str, labels: dict[str, str], value: float) -> None:
        """Set a gauge (or advance a counter to ``value``) by its metric name; unknown names are an error."""
        target = self._named.get(metric)
        if target is None:
            raise KeyError(f"unknown metric {metric!r}; defined: {', '.join(sorted(METRIC_NAMES))}")
        child = target.labels(**labels) if labels else target
        if isinstance(target, Counter):
            delta = value - child._value.get()
            if delta > 0:
                child.inc(delta)
        else:
            child.set(value)

    def _by_name(self) -> dict[str, Any]:
        out = {}
        for attr in vars(self).values():
            if isinstance(attr, (Counter, Gauge, Histogram)):
                name = attr._name
                out[name + "_total" if isinstance(attr, Counter) else name] = attr
        return out

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("streamlearn")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


#: every metric name exposed (counters with their ``_total`` suffix; histograms add _bucket/_sum/_count)
METRIC_NAMES = frozenset(StreamMetrics()._by_name())


class SnapshotMetrics:
    """Runner observer that drains a checkpointer's finished snapshots into :class:`StreamMetrics`.

    Used where the checkpointer is itself an observer (replays); the worker's commit coordinator
    drains the results for its commits and hands them to :meth:`StreamMetrics.observe_snapshot`.
    """

    def __init__(self, checkpointer: Any, metrics: StreamMetrics):
        self.checkpointer = checkpointer
        self.metrics = metrics

    def on_batch(self, runner: Any, result: Any) -> None:
        for snapshot in self.checkpointer.take_results():
            self.metrics.observe_snapshot(snapshot)
