"""The written contracts between the runner and what watches it.

The runner calls every observer after each micro-batch (:class:`RunnerObserver`). Some observers
carry state that must resume with the model they watch (:class:`StatefulObserver`: the drift
monitor), some raise drift alarms that the snapshot writer stores (:class:`DriftEventSource`), and
learners may export Prometheus gauges (:class:`GaugeSource`). These used to be found by
``getattr``; as ``Protocol``s they are checked by ``isinstance`` (and by type checkers), so an
observer that misspells a member is simply not one, visibly, instead of silently skipped.

Examples
--------
>>> from pipeline.drift import DriftMonitor
>>> monitor = DriftMonitor()
>>> isinstance(monitor, StatefulObserver), isinstance(monitor, DriftEventSource)
(True, True)
>>> from pipeline.learners.bandits import BetaThompson
>>> isinstance(BetaThompson(), GaugeSource)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pipeline.learners.base import StateBundle
    from pipeline.runner import BatchResult, Runner

__all__ = ["DriftEventSource", "GaugeSource", "RunnerObserver", "StatefulObserver"]


@runtime_checkable
class RunnerObserver(Protocol):
    """Called by the runner after each micro-batch, on the consuming thread, in list order."""

    def on_batch(self, runner: Runner, result: BatchResult) -> None: ...


@runtime_checkable
class StatefulObserver(Protocol):
    """An observer whose state is part of every snapshot, under the bundle ``state_key``.

    ``load_state`` may raise ``ValueError``/``KeyError`` for a bundle written under other
    settings; the runner then starts the observer afresh (observer settings are not part of the
    configuration hash).
    """

    state_key: str

    def on_batch(self, runner: Runner, result: BatchResult) -> None: ...

    def state(self) -> StateBundle: ...

    def load_state(self, bundle: StateBundle) -> None: ...


@runtime_checkable
class DriftEventSource(Protocol):
    """Hands over the drift alarms raised since the previous call (rows of ``drift_events``)."""

    def take_events(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class GaugeSource(Protocol):
    """A learner's own Prometheus gauges: ``(metric name, labels, value)`` triples."""

    def gauges(self) -> list[tuple[str, dict[str, str], float]]: ...
