"""Records on their way from ``poll`` into the runner: :class:`Intake`.

It keeps three things per owned partition: the offset expected next (records from before a seek
are dropped, so that no record is ever applied twice within a run), the offset-aligned buffer
(:class:`~consumers.worker.batcher.OffsetBatcher`), and — when the dead-letter topic fails — the
batches waiting for it. ``Runner.process`` writes a batch's dead letters before the batch changes
any state, so a :class:`~consumers.sources.DeadLetterError` leaves the runner untouched:
that batch and every batch after it are kept in order and offered again after a backoff; nothing
passes a record that could not be parked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from consumers.backoff import Backoff
from consumers.sources import DeadLetterError, PartitionRecords
from consumers.worker.batcher import Cut, OffsetBatcher
from consumers.worker.tracked import TrackedRunner
from pipeline.runner import RawBatch

__all__ = ["Intake"]

log = logging.getLogger(__name__)


class Intake:
    """Buffers, cuts and applies one worker's records (see the module docstring)."""

    def __init__(self, batch_size: int, max_wait_ms: int, backoff: Backoff | None = None):
        self.batcher = OffsetBatcher(batch_size, max_wait_ms)
        self.expected: dict[str, int] = {}  # next offset per partition, where known
        self.pending: list[Cut] = []  # waiting for the dead-letter topic, in order
        self.blocked: str | None = None
        self.received = 0
        self._retry_at = 0.0
        self._backoff = backoff or Backoff(0.5, 10.0)

    def accept(self, parts: Iterable[PartitionRecords], keys: set[str]) -> int:
        """Buffer the records of partitions in ``keys``; returns how many were kept."""
        kept = 0
        for part in parts:
            if part.key not in keys:
                continue
            expected = self.expected.get(part.key)
            if expected is not None and int(part.offsets[0]) < expected:
                keep = part.offsets >= expected
                part.values = [v for v, k in zip(part.values, keep) if k]
                part.offsets, part.timestamps_ms = part.offsets[keep], part.timestamps_ms[keep]
            if not len(part):
                continue
            self.batcher.add(part.key, part.values, part.offsets, part.timestamps_ms)
            self.expected[part.key] = int(part.offsets[-1]) + 1
            kept += len(part)
        self.received += kept
        return kept

    def apply(
        self, tracked: TrackedRunner, caught_up: Callable[[str], bool], stop: Callable[[], bool]
    ) -> int:
        """Process every batch that is ready, in order; returns how many were applied."""
        if self.pending:
            if time.monotonic() < self._retry_at:
                return 0
            cuts, self.pending = self.pending, []
            cuts += self.batcher.pop_ready(caught_up)
        else:
            cuts = self.batcher.pop_ready(caught_up)
        for i, cut in enumerate(cuts):
            if stop():
                return i  # the rest is consumed again after the restart
            raw = RawBatch(
                values=cut.values,
                positions={cut.key: cut.end},
                origin=cut.origin,
                received_ms=cut.received_ms,
            )
            try:
                tracked.process_partition(cut.key, raw)
            except DeadLetterError as exc:
                self.pending = cuts[i:]
                self.blocked = f"dead-letter topic unavailable: {exc}"
                delay = self._backoff.next_delay()
                self._retry_at = time.monotonic() + delay
                log.error("%s; consuming stops, retrying in %.1f s", self.blocked, delay)
                return i
        if self.blocked:
            log.warning("dead letters written again: consuming resumes")
        self.blocked = None
        self._backoff.reset()
        return len(cuts)

    def retry_now(self) -> None:
        """Batches waiting for the dead-letter topic are retried at the next :meth:`apply`."""
        self._retry_at = 0.0

    def position(self, key: str, offset: int | None) -> None:
        """Partition ``key`` was sought to ``offset`` (None: to the reset policy); forget its buffer."""
        self.drop([key])
        if offset is not None:
            self.expected[key] = offset

    def drop(self, keys: Iterable[str] | None = None) -> None:
        """Forget everything about ``keys`` (default: all partitions)."""
        if keys is None:
            self.batcher.drop()
            self.expected, self.pending, self.blocked = {}, [], None
            return
        keys = set(keys)
        self.batcher.drop(keys)
        self.pending = [c for c in self.pending if c.key not in keys]
        if not self.pending:
            self.blocked = None
        for key in keys:
            self.expected.pop(key, None)

    def idle(self) -> bool:
        """Nothing buffered and nothing waiting."""
        return not self.batcher.buffered() and not self.pending

    def next_due_ms(self, default: int) -> int:
        """How long the next poll may wait without delaying a partial batch or a retry."""
        timeout = default
        due = self.batcher.next_due()
        if due is not None:
            timeout = min(timeout, int(due * 1000) + 1)
        if self.blocked:
            timeout = min(timeout, 100)
        return max(0, timeout)
