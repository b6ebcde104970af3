"""The prequential loop (docs/design.md §4): decode → validate → featurise → for each learner predict,
evaluate, then learn — one micro-batch at a time, identically for replays and live Kafka.

The runner owns no I/O: raw batches come from a source, invalid records go to a dead-letter
sink, and everything else that watches the stream (Prometheus metrics, drift detectors, the
checkpointer) is an observer called after each batch.

Examples
--------
>>> from pipeline.config import load_config
>>> runner = Runner.from_config(load_config())
>>> raw = RawBatch(values=[b'{"event_id":"e1","ts":1,"user_id":"u","item_id":"i","label":1}', b'oops'],
...                positions={"demo.jsonl": 2})
>>> result = runner.process(raw)
>>> result.applied, [d.reason for d in result.dead_letters], runner.positions
(1, ['malformed_json'], {'demo.jsonl': 2})
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.config import Config
from pipeline.dedup import Deduplicator, LatenessTracker
from pipeline.evaluation import WindowedMetrics
from pipeline.events import DeadLetter, EventBatch, EventRules, attach_origins, decode_arrow, decode_json
from pipeline.events.time_units import TimestampPlausibility
from pipeline.features import FeatureBatch, FeatureSpec, Featurizer, concat_features
from pipeline.join.settings import JoinConfig
from pipeline.join.weights import calibrated_scores
from pipeline.learners.base import Learner, StateBundle
from pipeline.learners.registry import build_learner
from pipeline.observers import DriftEventSource, RunnerObserver, StatefulObserver

logger = logging.getLogger(__name__)

__all__ = ["BatchResult", "DeadLetterSink", "RawBatch", "Runner", "RunnerObserver"]


@dataclass
class RawBatch:
    """Records as a source delivers them, before any validation.

    Exactly one of ``values`` (JSON bytes per record) or ``arrow`` (a columnar batch) is set.
    ``positions`` are the source positions *after* this batch (``"topic:partition" -> next
    offset`` or ``"<file>" -> next row``); ``origin(i)`` describes record i for dead letters.
    """

    values: Sequence[bytes] | None = None
    arrow: pa.RecordBatch | None = None
    positions: dict[str, int] = field(default_factory=dict)
    origin: Callable[[int], dict] | None = None
    received_ms: int | None = None

    def __len__(self) -> int:
        return (
            len(self.values)
            if self.values is not None
            else (self.arrow.num_rows if self.arrow is not None else 0)
        )


class DeadLetterSink(Protocol):
    def write(self, dead_letters: list[DeadLetter]) -> None: ...

    def flush(self) -> None: ...


@dataclass
class BatchResult:
    """What one micro-batch did; handed to every observer.

    ``events`` and ``predictions`` are the examples whose labels are final, with the predictions
    they are evaluated on: the batch's events, or with the join (``[join]``) the exposures that
    became final, with the predictions made when they arrived (docs/delayed_feedback.md).
    ``features`` are those of ``events`` where the runner computed them (with the join only when a
    policy learned the final examples), else None.
    """

    records: int
    applied: int
    duplicates: int
    late: int
    dead_letters: list[DeadLetter]
    events: EventBatch
    features: FeatureBatch | None
    predictions: dict[str, np.ndarray]
    durations: dict[str, float]
    positions: dict[str, int]
    applied_at_ms: int
    first_effect_ts: np.ndarray | None = None  # event times of the examples that changed the models


class Runner:
    """Drives learners over micro-batches, prequentially.

    Parameters
    ----------
    learners
        The models; each sees every valid event once, predict before learn.
    rules, feature_spec
        Event validation rules and featurisation.
    dead_letters
        Sink for invalid records (``None`` drops them after counting — only for benchmarks).
    window, report_every
        Windowed-metric size and how often (in events) a row of metric history is recorded.
    dedup_window, allowed_lateness_ms
        Event-id deduplication window and lateness threshold.
    join
        Join exposures with their later outcomes (:mod:`pipeline.join`) when ``join.enabled``.
    """

    def __init__(
        self,
        learners: Sequence[Learner],
        rules: EventRules | None = None,
        feature_spec: FeatureSpec | None = None,
        dead_letters: DeadLetterSink | None = None,
        window: int = 10_000,
        report_every: int = 10_000,
        dedup_window: int = 100_000,
        allowed_lateness_ms: int = 3_600_000,
        observers: Iterable[RunnerObserver] = (),
        join: JoinConfig | None = None,
    ):
        names = [lr.name for lr in learners]
        if len(set(names)) != len(names):
            raise ValueError(f"learner names must be unique, got {names}")
        self.learners = list(learners)
        self.rules = rules or EventRules()
        self.featurizer = Featurizer(feature_spec)
        self.dead_letters = dead_letters
        self.report_every = report_every
        self.metrics = {lr.name: WindowedMetrics(window) for lr in self.learners}
        self.dedup = Deduplicator(dedup_window)
        self.lateness = LatenessTracker(allowed_lateness_ms)
        self.observers: list[RunnerObserver] = list(observers)
        self.positions: dict[str, int] = {}
        self.counters: dict[str, int] = {
            "records": 0,
            "applied": 0,
            "duplicates": 0,
            "late": 0,
            "dead_letters": 0,
        }
        self.dead_by_reason: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []  # metric rows since the last snapshot
        self.warnings: list[str] = []  # said once each (logged and in the summary)
        self._next_report = report_every
        self._ts_check = TimestampPlausibility(self.rules.ts_unit)
        self._ts_checks_left = 10  # batches: a stream in another unit shows at once
        self.joiner = None
        #: "fnc": every joined learner's scores are calibrated (pipeline.join.weights), else None
        self.calibration = join.calibration if join is not None else None
        if join is not None and join.enabled:
            from pipeline.join.joiner import Joiner  # numpy/pyarrow work only when the join is on

            self.joiner = Joiner(join, names)

    @classmethod
    def from_config(cls, config: Config, dead_letters: DeadLetterSink | None = None, **kwargs) -> Runner:
        """A runner over the configured learners. Entry points use :func:`consumers.stack.build_stack`,
        which adds the observers."""
        learners = [build_learner(s.kind, s.label, dict(s.params)) for s in config.learners]
        return cls.with_config(config, learners, dead_letters, **kwargs)

    @classmethod
    def with_config(
        cls, config: Config, learners: Sequence[Learner], dead_letters: DeadLetterSink | None = None, **kwargs
    ) -> Runner:
        """A runner over ``learners`` with every other setting (events, features, evaluation) from ``config``."""
        ev = config.events
        return cls(
            learners,
            rules=EventRules.from_config(ev),
            feature_spec=FeatureSpec(
                config.features.crosses, config.features.standardize, config.features.exclude
            ),
            dead_letters=dead_letters,
            window=config.evaluation.window,
            report_every=config.evaluation.report_every,
            dedup_window=ev.dedup_window,
            allowed_lateness_ms=ev.allowed_lateness_ms,
            join=config.join,
            **kwargs,
        )

    # ------------------------------------------------------------------------------ the loop
    def process(self, raw: RawBatch) -> BatchResult:
        """Run one micro-batch through validation, every learner, metrics and observers."""
        t0 = time.perf_counter()
        durations: dict[str, float] = {}
        if raw.arrow is not None:
            events, dead = decode_arrow(raw.arrow, self.rules)
        else:
            events, dead = decode_json(raw.values or [], self.rules)
        if dead:
            dead = attach_origins(dead, raw.origin or (lambda i: {"index": i}))
            if self.dead_letters is not None:
                self.dead_letters.write(dead)
            for d in dead:
                self.dead_by_reason[d.reason] = self.dead_by_reason.get(d.reason, 0) + 1
        if self.joiner is None:
            keep = self.dedup.filter(events.column("event_id"))
        else:
            keep = self.dedup.filter_hashes(self.joiner.dedup_hashes(events))
        duplicates = int(len(keep) - keep.sum())
        if duplicates:
            events = events.take(np.flatnonzero(keep))
        late = self.lateness.update(events.ts)
        if self._ts_checks_left and len(events):
            self._ts_checks_left -= 1
            message = self._ts_check.check(events.ts)
            if message is not None:
                logger.warning(message)
                self.warnings.append(message)
        t1 = time.perf_counter()
        durations["decode"] = t1 - t0
        applied = len(events)
        first_effect_ts = None
        if self.joiner is None:
            features = self.featurizer.transform_and_update(events) if len(events) else None
            t2 = time.perf_counter()
            durations["features"] = t2 - t1
            predictions: dict[str, np.ndarray] = {}
            if features is not None:
                labels = features.labels
                for learner in self.learners:
                    ts = time.perf_counter()
                    p = learner.predict(features)
                    self.metrics[learner.name].update(p, labels)
                    learner.learn(features, p)
                    predictions[learner.name] = p
                    durations[f"learn:{learner.name}"] = time.perf_counter() - ts
        else:
            events, features, predictions, first_effect_ts = self._process_joined(events, durations)
        self.positions.update(raw.positions)
        c = self.counters
        c["records"] += len(raw)
        c["applied"] += applied
        c["duplicates"] += duplicates
        c["late"] += late
        c["dead_letters"] += len(dead)
        if c["applied"] >= self._next_report and len(events):
            self._record_history(int(events.ts.max()))
            self._next_report = (c["applied"] // self.report_every + 1) * self.report_every
        durations["total"] = time.perf_counter() - t0
        result = BatchResult(
            records=len(raw),
            applied=applied,
            duplicates=duplicates,
            late=late,
            dead_letters=dead,
            events=events,
            features=features,
            predictions=predictions,
            durations=durations,
            positions=dict(self.positions),
            applied_at_ms=int(time.time() * 1000),
            first_effect_ts=first_effect_ts,
        )
        for obs in self.observers:
            obs.on_batch(self, result)
        return result

    def _process_joined(self, events: EventBatch, durations: dict[str, float]):
        """The join's batch (:mod:`pipeline.join.joiner`): score the new exposures before anything
        is learned, learn what the strategy says, evaluate the exposures that became final."""
        joiner = self.joiner
        t1 = time.perf_counter()
        step = joiner.ingest(events)
        scored = self.featurizer.transform_and_update(step.scored) if len(step.scored) else None
        if scored is not None:
            joiner.record_features(scored)
        durations["features"] = time.perf_counter() - t1
        scores = {}
        for learner in self.learners:
            ts = time.perf_counter()
            scores[learner.name] = p = learner.predict(scored) if scored is not None else np.zeros(0)
            # evaluated (and reported) as served; learned from as the learner's own raw scores
            joiner.record_predictions(learner.name, calibrated_scores(learner, p, self.calibration))
            durations[f"learn:{learner.name}"] = time.perf_counter() - ts
        out = joiner.advance()
        ts = time.perf_counter()
        train = out.train_features(self.featurizer, scored)
        final = None
        if any(getattr(lr, "learns_final_labels", False) for lr in self.learners) and len(out.evaluated):
            final = out.evaluated_features(self.featurizer, scored)
        learn, kinds = train, out.train_kind
        if out.learn_scored and scored is not None:
            learn = scored if train is None else concat_features(scored, train)
            kinds = np.concatenate([out.scored_kind, out.train_kind])
        durations["features"] += time.perf_counter() - ts
        for learner in self.learners:
            ts = time.perf_counter()
            if getattr(learner, "learns_final_labels", False):
                # policies learn rewards, so only an exposure's final one (never a provisional 0)
                if final is not None:
                    learner.learn(final, learner.predict(final))
            elif learn is not None:
                # one learning step per batch, fake negatives and late positives together: two
                # steps would leave the model just pushed up by positives at every scoring
                p = learner.predict(train) if train is not None else np.zeros(0)
                if out.learn_scored and scored is not None:
                    p = np.concatenate([scores[learner.name], p])  # scored above, before learning
                w = joiner.weights(kinds, learn.labels, p)
                learner.learn(dataclasses.replace(learn, weights=w), p)
            p_eval = out.predictions[learner.name]
            ok = np.isfinite(p_eval)
            if ok.any():
                self.metrics[learner.name].update(p_eval[ok], out.evaluated.label[ok])
            durations[f"learn:{learner.name}"] += time.perf_counter() - ts
        # the final examples' features where they were needed (policies), else none
        return out.evaluated, final, out.predictions, out.first_effect_ts

    def run(self, batches: Iterable[RawBatch], limit: int | None = None, on_batch=None) -> dict[str, Any]:
        """Process batches until the source ends or ``limit`` records were read; returns :meth:`summary`."""
        started = time.perf_counter()
        read = 0
        for raw in batches:
            result = self.process(raw)
            read += result.records
            if on_batch is not None:
                on_batch(result)
            if limit is not None and read >= limit:
                break
        return self.summary(time.perf_counter() - started)

    def _record_history(self, event_ts_ms: int) -> None:
        for name, wm in self.metrics.items():
            row = {"events": self.counters["applied"], "event_ts_ms": event_ts_ms, "learner": name}
            row.update(wm.get())
            self.history.append(row)

    def take_drift_events(self) -> list[dict[str, Any]]:
        """Drift alarms raised since the last call, from every observer that records them."""
        rows: list[dict[str, Any]] = []
        for obs in self.observers:
            if isinstance(obs, DriftEventSource):
                rows.extend(obs.take_events())
        return rows

    def take_history(self) -> list[dict[str, Any]]:
        """Metric rows recorded since the last call (the snapshot writer drains them)."""
        rows, self.history = self.history, []
        return rows

    def summary(self, seconds: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["dead_letters_by_reason"] = dict(sorted(self.dead_by_reason.items()))
        if seconds is not None:
            out["seconds"] = seconds
            out["events_per_second"] = self.counters["records"] / seconds if seconds > 0 else float("nan")
        out["learners"] = {name: wm.get() for name, wm in self.metrics.items()}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.joiner is not None:
            out["join"] = {**self.joiner.counters, **self.joiner.gauges()}
        return out

    # ------------------------------------------------------------------------------ state
    def state(self) -> dict[str, StateBundle]:
        """Everything needed to resume: the runner's own bundle under ``"_runner"`` plus one per learner."""
        tables = {"features": self.featurizer.state()}
        for name, wm in self.metrics.items():
            tables[f"window.{name}"] = wm.state()
        meta = {
            "positions": dict(self.positions),
            "counters": dict(self.counters),
            "dead_by_reason": dict(self.dead_by_reason),
            "max_ts": self.lateness.max_ts,
            "next_report": self._next_report,
            "window_seen": {n: wm.seen for n, wm in self.metrics.items()},
        }
        bundles = {"_runner": StateBundle(tables=tables, arrays={"dedup": self.dedup.state()}, meta=meta)}
        for learner in self.learners:
            bundles[learner.name] = learner.state()
        if self.joiner is not None:
            bundles[self.joiner.state_key] = self.joiner.state()
        for obs in self.observers:
            # stateful observers (drift detectors) resume with the model they watch
            if isinstance(obs, StatefulObserver):
                bundles[obs.state_key] = obs.state()
        return bundles

    def load_state(self, bundles: dict[str, StateBundle], cold: Sequence[str] = ()) -> None:
        """Restore every learner and observer from ``bundles``; learners named in ``cold`` may be
        absent there and keep their fresh state (a learner added since the snapshot)."""
        missing = [lr.name for lr in self.learners if lr.name not in bundles and lr.name not in cold]
        if missing or "_runner" not in bundles:
            raise ValueError(f"snapshot lacks state for {missing or ['_runner']}; saved: {sorted(bundles)}")
        own = bundles["_runner"]
        self.featurizer.load_state(own.tables["features"])
        self.dedup.load_state(own.arrays["dedup"])
        meta = own.meta
        self.positions = {k: int(v) for k, v in meta["positions"].items()}
        self.counters.update({k: int(v) for k, v in meta["counters"].items()})
        self.dead_by_reason = {k: int(v) for k, v in meta["dead_by_reason"].items()}
        self.lateness.max_ts = meta["max_ts"]
        self._next_report = int(meta["next_report"])
        for name, wm in self.metrics.items():
            key = f"window.{name}"
            if key in own.tables:
                wm.load_state(own.tables[key], int(meta["window_seen"].get(name, 0)))
        for learner in self.learners:
            if learner.name in bundles:
                learner.load_state(bundles[learner.name])
        if self.joiner is not None:
            if self.joiner.state_key not in bundles:
                raise ValueError(
                    "the join is on, but the snapshot holds no join state (written without [join])"
                )
            self.joiner.load_state(bundles[self.joiner.state_key])
        for obs in self.observers:
            if isinstance(obs, StatefulObserver) and obs.state_key in bundles:
                try:
                    obs.load_state(bundles[obs.state_key])
                except (ValueError, KeyError) as exc:
                    # observer settings are not part of the config hash: start it afresh rather than fail
                    logger.warning("could not restore %s state (%s); starting it afresh", obs.state_key, exc)
