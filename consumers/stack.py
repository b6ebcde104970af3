"""The one place that assembles the per-batch stack: the runner and every observer, in one order.

``streamlearn replay``, ``streamlearn worker``, ``streamlearn evaluate``, the benchmarks and the
Prometheus test targets all call :func:`build_stack`; nothing else constructs runner observers.
Before this existed the stack was wired separately in each entry point, and the worker lost its
drift detection without anyone noticing (docs/architecture.md, "One assembly point").

The observer order is fixed, because later observers read what earlier ones produced in the same
batch:

1. :class:`~pipeline.metrics.StreamMetrics` (when the process exports metrics),
2. :class:`~pipeline.drift.DriftMonitor` (``[drift] enabled``; it updates the drift gauges of 1),
3. :class:`~pipeline.report.ReportRecorder` (``report_every``; it samples the monitor's scores),
4. caller-supplied observers (a benchmark's freshness probe),
5. the :class:`~state.checkpoint.Checkpointer` and its :class:`~pipeline.metrics.SnapshotMetrics`,
   so that a batch's metric rows and drift alarms land in the snapshot that covers the batch,
6. the :class:`~pipeline.serving.publisher.ViewPublisher` (``serving=``), last: the serving API
   gets the model only once everything about the batch is done.

The worker's checkpointer is driven by its commit coordinator instead of being an observer (a
snapshot there becomes durable only with its Kafka commit); the coordinator hands each finished
snapshot to :meth:`~pipeline.metrics.StreamMetrics.observe_snapshot`, the same route that
:class:`~pipeline.metrics.SnapshotMetrics` takes in a replay.

Examples
--------
>>> from pipeline.config import load_config
>>> from pipeline.runner import RawBatch
>>> stack = build_stack(load_config(environ={}), metrics=True)
>>> [type(o).__name__ for o in stack.runner.observers]
['StreamMetrics', 'DriftMonitor']
>>> raw = RawBatch(values=[b'{"event_id":"e1","ts":1,"user_id":"u","item_id":"i","label":1}'],
...                positions={"demo.jsonl": 1})
>>> stack.runner.process(raw).applied
1
>>> again = stack.rebuild()  # a fresh runner and monitor over the same metrics (worker rollback)
>>> again.metrics is stack.metrics, again.drift is stack.drift, again.runner.counters["applied"]
(True, False, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.config import Config
from pipeline.runner import DeadLetterSink, Runner

if TYPE_CHECKING:
    from pipeline.drift import DriftMonitor
    from pipeline.learners.base import Learner
    from pipeline.metrics import StreamMetrics
    from pipeline.observers import RunnerObserver
    from pipeline.report import ReportRecorder
    from pipeline.serving.publisher import ViewPublisher
    from pipeline.serving.view import ViewHolder
    from state.checkpoint import Checkpointer

__all__ = ["Stack", "build_stack"]


@dataclass
class Stack:
    """A runner and the observers built for it from one configuration (see :func:`build_stack`).

    Attributes
    ----------
    runner
        The prequential runner; its ``observers`` list is the stack in order.
    metrics, drift, recorder, checkpointer
        The observers by role, or None where the configuration or the caller turned one off.
    """

    config: Config
    runner: Runner
    metrics: StreamMetrics | None = None
    drift: DriftMonitor | None = None
    recorder: ReportRecorder | None = None
    checkpointer: Checkpointer | None = None
    observers: tuple[RunnerObserver, ...] = ()
    dead_letters: DeadLetterSink | None = None
    learners: Sequence[Learner] | None = field(default=None, repr=False)
    report_every: int | None = None
    monitor_drift: bool = True
    publisher: ViewPublisher | None = None

    def rebuild(self) -> Stack:
        """The same stack afresh: new runner, learners and stateful observers; the same metrics.

        The worker calls it to restore a snapshot into clean state (at start and on rollback);
        the Prometheus registry lives as long as the process, so the metrics are shared.
        """
        if self.learners is not None:
            raise ValueError("a stack built over caller-supplied learner objects cannot be rebuilt")
        return build_stack(
            self.config,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            report_every=self.report_every,
            checkpointer=self.checkpointer,
            observers=self.observers,
            drift=self.monitor_drift,
            serving=self.publisher.holder if self.publisher is not None else None,
        )


def build_stack(
    config: Config,
    *,
    dead_letters: DeadLetterSink | None = None,
    metrics: StreamMetrics | bool = False,
    report_every: int | None = None,
    checkpointer: Checkpointer | None = None,
    observers: Sequence[RunnerObserver] = (),
    learners: Sequence[Learner] | None = None,
    drift: bool = True,
    serving: ViewHolder | None = None,
) -> Stack:
    """Build the runner and its observers from ``config``, in the one order (module docstring).

    Parameters
    ----------
    config
        The validated configuration: learners, events, features, evaluation and ``[drift]``.
    dead_letters
        Where invalid records go (None: counted only — benchmarks).
    metrics
        True for a new :class:`~pipeline.metrics.StreamMetrics`, an existing one to share (the
        ops server exports it), False for none.
    report_every
        Build a :class:`~pipeline.report.ReportRecorder` sampling every this many events.
    checkpointer
        Snapshot on the runner's cadence as its last observer (replays); restoring is the
        caller's (it must seek the source to the restored positions).
    observers
        Extra observers, placed after the recorder and before the checkpointer.
    learners
        Learner objects to use instead of ``config.learners`` (``evaluate``'s wrapped policy,
        benchmarks that build a model in code).
    drift
        False to leave out the drift monitor even when ``[drift] enabled`` (``evaluate``: an
        off-policy estimate of a fixed log has no live model to watch).
    serving
        The holder the serving API reads: a :class:`~pipeline.serving.publisher.ViewPublisher`
        swaps the model into it after batches (``serving.refresh_ms``).
    """
    from pipeline.drift import DriftMonitor

    if metrics is True:
        from pipeline.metrics import StreamMetrics

        metrics_obj: StreamMetrics | None = StreamMetrics()
    else:
        metrics_obj = metrics or None
    monitor = DriftMonitor.from_config(config.drift, metrics_obj) if drift else None
    recorder = None
    if report_every is not None:
        from pipeline.report import ReportRecorder

        recorder = ReportRecorder(report_every, drift=monitor)
    stack_observers: list = [o for o in (metrics_obj, monitor, recorder) if o is not None]
    stack_observers.extend(observers)
    if checkpointer is not None:
        stack_observers.append(checkpointer)
        if metrics_obj is not None:
            from pipeline.metrics import SnapshotMetrics

            stack_observers.append(SnapshotMetrics(checkpointer, metrics_obj))
    publisher = None
    if serving is not None:
        from pipeline.serving.publisher import ViewPublisher

        publisher = ViewPublisher(serving, config)
        stack_observers.append(publisher)
    if learners is None:
        runner = Runner.from_config(config, dead_letters=dead_letters, observers=stack_observers)
    else:
        runner = Runner.with_config(config, learners, dead_letters=dead_letters, observers=stack_observers)
    return Stack(
        config=config,
        runner=runner,
        metrics=metrics_obj,
        drift=monitor,
        recorder=recorder,
        checkpointer=checkpointer,
        observers=tuple(observers),
        dead_letters=dead_letters,
        learners=learners,
        report_every=report_every,
        monitor_drift=drift,
        publisher=publisher,
    )
