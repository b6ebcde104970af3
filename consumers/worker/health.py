"""What the worker reports and how it holds back: readiness, consumer lag, paused partitions.

Readiness (``/readyz``) is false, with the first reason that applies, while the worker is
stopping, has no broker connection, waits for the dead-letter topic, fails to poll, or fails to
commit. Lag is ``end offset − processed position`` per owned partition (records read but not
yet applied count as lag). A partition is paused while the worker waits for the dead-letter topic
(all of them), while it cannot be positioned, or while it holds ``limit`` records in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from consumers.kafka import BROKER_ERRORS
from consumers.sources import PartitionedSource, split_key
from consumers.worker.batcher import OffsetBatcher
from pipeline.metrics import StreamMetrics

__all__ = ["apply_pauses", "readiness", "update_lag"]

log = logging.getLogger(__name__)


def readiness(
    *, stopping: bool, connected: bool, problems: Iterable[str | None], bootstrap: str
) -> tuple[bool, str]:
    """``(ready, reason)``.

    >>> readiness(stopping=False, connected=True, problems=(None, "poll failed"), bootstrap="k:9092")
    (False, 'poll failed')
    >>> readiness(stopping=False, connected=False, problems=(), bootstrap="k:9092")
    (False, 'broker unreachable (k:9092)')
    """
    if stopping:
        return False, "stopping"
    if not connected:
        return False, f"broker unreachable ({bootstrap})"
    for problem in problems:
        if problem:
            return False, problem
    return True, ""


def update_lag(
    source: PartitionedSource,
    positions: Mapping[str, int],
    metrics: StreamMetrics,
    previous: Mapping[str, int],
) -> dict[str, int]:
    """Set the lag gauge of every owned partition (and drop those no longer owned); returns the lag."""
    owned = source.owned()
    try:
        ends = source.end_offsets(owned, timeout_ms=2000)
    except BROKER_ERRORS as exc:
        log.debug("lag unavailable: %r", exc)
        return dict(previous)
    lag = {k: max(0, ends[k] - positions[k]) for k in owned if k in ends and k in positions}
    for key in set(previous) - set(lag):
        topic, partition = split_key(key)
        try:
            metrics.consumer_lag.remove(topic, str(partition))
        except KeyError:
            pass
    for key, value in lag.items():
        topic, partition = split_key(key)
        metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(value)
    return lag


def apply_pauses(
    source: PartitionedSource, batcher: OffsetBatcher, limit: int, blocked: bool, unpositioned: set[str]
) -> None:
    """Pause and resume owned partitions so that exactly the ones that must wait are paused."""
    owned = set(source.owned())
    if blocked:
        want = owned
    else:
        want = {k for k in owned if batcher.buffered(k) >= limit} | (unpositioned & owned)
    paused = set(source.paused())
    if want - paused:
        source.pause(sorted(want - paused))
    if paused - want:
        source.resume(sorted(paused - want))
