"""The :class:`DriftMonitor`: a runner observer that watches every drift signal of the stream.

Signals (the ``signal`` label of the drift metrics, a small fixed set given by the configuration):

* ``loss:<learner>`` — concept drift, a river detector on the learner's excess logloss
  (:mod:`pipeline.drift.detectors`); its score (``method="excess_logloss"``) is the mean excess
  logloss over the current window.
* ``prediction:<learner>`` and ``label`` — data drift of the model's outputs and of the outcome
  (PSI / KS); ``feature:<name>`` — each configured feature, numeric or categorical (decided by the
  first batch in which it appears), read from the event's ``features`` object or from the event
  fields ``position``, ``propensity`` and ``event_type``.

Every alarm becomes a row ``{ts_ms, events, signal, detector, score}``: ``ts_ms`` is the event time
and ``events`` the number of events applied when it was raised. :meth:`DriftMonitor.take_events`
drains the rows for the next snapshot (``drift_events.parquet``); :attr:`DriftMonitor.alarms`
keeps the run's alarms for reports. With a :class:`~pipeline.metrics.StreamMetrics`, the monitor
sets ``streamlearn_drift_score{signal,method}`` after each batch and counts
``streamlearn_drift_detected_total{signal,detector}`` (every series exists from the first batch,
at 0, so that alert rules and dashboards see it before the first alarm).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> monitor = DriftMonitor(DriftSettings(warmup_events=0, predictions=False, reference_events=1000))
>>> for start in range(0, 8000, 1000):
...     ctr = 0.2 if start < 4000 else 0.5                     # the click rate jumps at event 4000
...     y = (rng.random(1000) < ctr).astype(float)
...     _ = monitor.update(start, np.arange(start, start + 1000), y, {"m": np.full(1000, 0.2)})
>>> [(a["events"], a["signal"], a["detector"]) for a in monitor.alarms]
[(4320, 'loss:m', 'adwin'), (6000, 'label', 'psi'), (6000, 'label', 'ks')]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline.drift.data_drift import CategoricalSignal, NumericSignal
from pipeline.drift.detectors import LossDriftTracker
from pipeline.drift.settings import DriftSettings
from pipeline.learners.base import StateBundle

__all__ = ["DriftMonitor", "feature_values"]

LOSS_METHOD = "excess_logloss"
_EVENT_FIELDS = {"position": "numeric", "propensity": "numeric", "event_type": "categorical"}
_STATE_VERSION = 1


def feature_values(events: Any, name: str) -> tuple[str, Any] | None:
    """``(kind, values)`` of feature ``name`` in an :class:`~pipeline.events.EventBatch`, or None if absent.

    Numeric values come as a float array, categorical ones as an Arrow string array; events
    without the feature contribute nothing.
    """
    if name == "position":
        pos = events.position
        return "numeric", pos[pos >= 0].astype(np.float64)
    if name == "propensity":
        return "numeric", events.propensity
    if name == "event_type":
        return "categorical", events.column("event_type")
    for kind, column in (("numeric", "num_features"), ("categorical", "cat_features")):
        col = events.column(column)
        if len(col.keys) == 0:
            continue
        mask = pc.equal(col.keys, name)
        if pc.any(mask).as_py():
            values = col.items.filter(mask)
            if kind == "numeric":
                return kind, np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
            return kind, values
    return None


class DriftMonitor:
    """Concept and data drift over the stream, as a runner observer.

    Parameters
    ----------
    settings
        What to watch and the thresholds (:class:`DriftSettings`).
    metrics
        A :class:`~pipeline.metrics.StreamMetrics` to update, or None.
    """

    #: the key of this observer's bundle in a snapshot (``Runner.state()`` / ``load_state``)
    state_key = "_drift"

    def __init__(self, settings: DriftSettings | None = None, metrics: Any = None):
        self.settings = settings or DriftSettings()
        self.metrics = metrics
        self.events = 0
        self._loss: dict[str, LossDriftTracker] = {}
        self._data: dict[str, NumericSignal | CategoricalSignal] = {}
        self._warmup_left: dict[str, int] = {}
        self._pending: list[dict[str, Any]] = []
        self.alarms: deque[dict[str, Any]] = deque(maxlen=self.settings.max_alarms)

    @classmethod
    def from_config(cls, section: Any, metrics: Any = None) -> DriftMonitor | None:
        """A monitor from a ``[drift]`` configuration section (any object with the fields of
        :class:`DriftSettings`), or None when ``enabled`` is false."""
        names = DriftSettings.__dataclass_fields__
        settings = DriftSettings(**{k: getattr(section, k) for k in names if hasattr(section, k)})
        return cls(settings, metrics) if settings.enabled else None

    # ------------------------------------------------------------------------------ observer
    def on_batch(self, runner: Any, result: Any) -> None:
        if not len(result.events):  # (with the join: no exposure became final in this batch)
            return
        events = result.events
        features = {}
        for name in self.settings.features:
            found = feature_values(events, name)
            if found is not None:
                features[name] = found
        start = runner.counters["applied"] - result.applied
        self.update(start, events.ts, events.label, result.predictions, features)

    def update(
        self,
        start: int,
        ts: np.ndarray,
        labels: np.ndarray,
        predictions: Mapping[str, np.ndarray],
        features: Mapping[str, tuple[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Absorb a batch whose first event is number ``start`` of the stream; returns the new alarms.

        ``predictions`` maps learner names to probabilities; ``features`` maps feature names to
        ``(kind, values)`` as :func:`feature_values` returns them.
        """
        s = self.settings
        n = len(labels)
        ts = np.asarray(ts)
        batch_ts = int(ts.max()) if n else 0
        new: list[dict[str, Any]] = []
        for learner, probs in predictions.items():
            tracker = self._loss.get(learner) or self._add_loss(learner)
            for events, score in tracker.update(start, probs, labels):
                when = int(ts[min(max(events - 1 - start, 0), n - 1)])
                new.append(self._alarm(when, events, f"loss:{learner}", s.detector, score))
            if s.predictions:
                signal = f"prediction:{learner}"
                values = self._after_warmup(signal, np.asarray(probs))
                new += self._data_update(signal, "numeric", values, start + n, batch_ts)
        if s.labels:
            new += self._data_update("label", "numeric", labels, start + n, batch_ts)
        for name, (kind, values) in (features or {}).items():
            new += self._data_update(f"feature:{name}", kind, values, start + n, batch_ts)
        self.events = start + n
        self._publish_scores()
        return new

    def _add_loss(self, learner: str) -> LossDriftTracker:
        tracker = self._loss[learner] = LossDriftTracker(self.settings)
        self._declare(f"loss:{learner}", (self.settings.detector,))
        return tracker

    def _after_warmup(self, signal: str, values: np.ndarray) -> np.ndarray:
        left = self._warmup_left.setdefault(signal, self.settings.warmup_events)
        skip = min(left, len(values))
        self._warmup_left[signal] = left - skip
        return values[skip:]

    def _data_update(self, signal: str, kind: str, values: Any, events: int, ts_ms: int) -> list[dict]:
        sig = self._data.get(signal)
        if sig is None:
            sig = self._data[signal] = (
                NumericSignal(self.settings) if kind == "numeric" else CategoricalSignal(self.settings)
            )
            self._declare(signal, sig.methods)
        elif sig.kind != kind:
            return []  # a feature seen as numeric first ignores later string values (and vice versa)
        return [self._alarm(ts_ms, events, signal, method, score) for method, score in sig.update(values)]

    def _declare(self, signal: str, detectors: tuple[str, ...]) -> None:
        if self.metrics is not None:
            for detector in detectors:
                self.metrics.drift_detected.labels(signal=signal, detector=detector)

    def _alarm(self, ts_ms: int, events: int, signal: str, detector: str, score: float) -> dict[str, Any]:
        row = {
            "ts_ms": int(ts_ms),
            "events": int(events),
            "signal": signal,
            "detector": detector,
            "score": float(score),
        }
        self._pending.append(row)
        self.alarms.append(row)
        if self.metrics is not None:
            self.metrics.drift_detected.labels(signal=signal, detector=detector).inc()
        return row

    def _publish_scores(self) -> None:
        if self.metrics is None:
            return
        for (signal, method), value in self.scores().items():
            self.metrics.drift_score.labels(signal=signal, method=method).set(value)

    # ------------------------------------------------------------------------------ reading
    def scores(self) -> dict[tuple[str, str], float]:
        """Current score per ``(signal, method)`` (signals still collecting their reference are absent)."""
        out = {}
        for learner, tracker in self._loss.items():
            if not math.isnan(tracker.score):
                out[(f"loss:{learner}", LOSS_METHOD)] = tracker.score
        for signal, sig in self._data.items():
            for method, value in sig.scores.items():
                out[(signal, method)] = value
        return out

    def take_events(self) -> list[dict[str, Any]]:
        """Alarm rows since the last call (the snapshot writer stores them as ``drift_events.parquet``)."""
        rows, self._pending = self._pending, []
        return rows

    # ------------------------------------------------------------------------------ state
    def state(self) -> StateBundle:
        """Every detector, window and reference, for a snapshot; pending alarm rows are not included."""
        signals, tables, arrays = [], {}, {}
        parts = [("loss", k, t.state()) for k, t in self._loss.items()]
        parts += [("data", k, sig.state()) for k, sig in self._data.items()]
        for i, (group, name, bundle) in enumerate(parts):
            signals.append({"group": group, "name": name, "meta": bundle.meta})
            tables.update({f"{i}_{k}": v for k, v in bundle.tables.items()})
            arrays.update({f"{i}_{k}": v for k, v in bundle.arrays.items()})
        meta = {
            "version": _STATE_VERSION,
            "events": self.events,
            "signals": signals,
            "warmup_left": dict(self._warmup_left),
        }
        return StateBundle(tables=tables, arrays=arrays, meta=meta)

    def load_state(self, bundle: StateBundle) -> None:
        meta = bundle.meta
        if meta.get("version") != _STATE_VERSION:
            raise ValueError(f"drift state version {meta.get('version')!r} is not {_STATE_VERSION}")
        self._loss, self._data = {}, {}
        for i, entry in enumerate(meta["signals"]):
            prefix = f"{i}_"
            part = StateBundle(
                tables={k[len(prefix) :]: v for k, v in bundle.tables.items() if k.startswith(prefix)},
                arrays={k[len(prefix) :]: v for k, v in bundle.arrays.items() if k.startswith(prefix)},
                meta=entry["meta"],
            )
            name = entry["name"]
            if entry["group"] == "loss":
                self._add_loss(name).load_state(part)
            else:
                kind = entry["meta"]["kind"]
                sig = NumericSignal(self.settings) if kind == "numeric" else CategoricalSignal(self.settings)
                sig.load_state(part)
                self._data[name] = sig
                self._declare(name, sig.methods)
        self.events = int(meta["events"])
        self._warmup_left = {k: int(v) for k, v in meta["warmup_left"].items()}
