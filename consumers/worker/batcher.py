"""Offset-aligned micro-batches: the same records always make the same batches.

Kafka's ``poll`` returns whatever happens to be fetched, so batches cut from it would differ
between two runs over the same log, and so would a learner that predicts a whole batch before it
learns. :class:`OffsetBatcher` buffers records per partition and cuts them at the offsets that are
multiples of ``batch_size``: the batch holding offset ``o`` is ``[o // B * B, (o // B + 1) * B)``.
A block is cut as soon as its last offset (or any later one) has arrived, which is exact even with
gaps in the offsets (transaction markers, compaction); the position after it is the block's end.

A partial block is cut only when the partition is *caught up* (nothing more to fetch right now)
and its oldest record has waited ``max_wait_ms``: that keeps a live stream fresh, while a backlog
(a pre-filled topic, a restart after a crash) is always cut at the same boundaries. After a
partial cut the next batch ends at the next multiple of ``batch_size`` again, so alignment is
restored at once. A worker that resumes from a snapshot resumes at a batch boundary, hence a
single-partition run interrupted any number of times ends in exactly the state of an
uninterrupted one, as long as both saw the same partial cuts (in a drain: only the last one).

Examples
--------
>>> import numpy as np
>>> b = OffsetBatcher(batch_size=4, max_wait_ms=0)
>>> b.add("t:0", [b"x"] * 5, np.arange(2, 7), np.zeros(5, np.int64), now=0.0)
>>> [(c.offsets.tolist(), c.end) for c in b.pop_ready(caught_up=lambda key: False, now=0.0)]
[([2, 3], 4)]
>>> [(c.offsets.tolist(), c.end) for c in b.pop_ready(caught_up=lambda key: True, now=0.0)]
[([4, 5, 6], 7)]
>>> b.add("t:0", [b"y"] * 3, np.array([7, 8, 9]), np.zeros(3, np.int64), now=1.0)
>>> [(c.offsets.tolist(), c.end) for c in b.pop_ready(caught_up=lambda key: False, now=1.0)]
[([7], 8)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Cut", "OffsetBatcher"]


@dataclass
class Cut:
    """One micro-batch of one partition: records ``offsets`` and the position ``end`` after them."""

    key: str
    values: list[bytes]
    offsets: np.ndarray
    timestamps_ms: np.ndarray
    end: int
    received_ms: int

    def __len__(self) -> int:
        return len(self.values)

    def origin(self, i: int) -> dict:
        """Where record ``i`` came from (for dead letters)."""
        topic, _, part = self.key.rpartition(":")
        return {"topic": topic, "partition": int(part), "offset": int(self.offsets[i])}


@dataclass
class _Buffer:
    values: list[bytes] = field(default_factory=list)
    offsets: list[np.ndarray] = field(default_factory=list)
    stamps: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    first_arrival: float = 0.0
    received_ms: int = 0

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self.offsets) > 1:  # concatenate once, keep the result
            self.offsets = [np.concatenate(self.offsets)]
            self.stamps = [np.concatenate(self.stamps)]
        return self.offsets[0], self.stamps[0]


class OffsetBatcher:
    """Per-partition buffers cut into offset-aligned micro-batches (see the module docstring).

    Parameters
    ----------
    batch_size
        Records per full batch and the alignment of batch boundaries in each partition.
    max_wait_ms
        How long the oldest record of a partial block may wait before a caught-up partition is cut.
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(self, batch_size: int, max_wait_ms: int, clock: Callable[[], float] = time.monotonic):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.batch_size = int(batch_size)
        self.max_wait_s = max_wait_ms / 1000.0
        self._clock = clock
        self._buffers: dict[str, _Buffer] = {}

    def add(
        self,
        key: str,
        values: list[bytes],
        offsets: np.ndarray,
        timestamps_ms: np.ndarray,
        now: float | None = None,
    ) -> None:
        """Append one poll's records of partition ``key`` (offsets ascending, after those buffered)."""
        if not len(values):
            return
        buf = self._buffers.setdefault(key, _Buffer())
        if buf.count:
            last = int(buf.offsets[-1][-1])
            if int(offsets[0]) <= last:
                raise ValueError(f"offsets of {key} must ascend: got {int(offsets[0])} after {last}")
        else:
            buf.first_arrival = self._clock() if now is None else now
            buf.received_ms = int(time.time() * 1000)
        buf.values.extend(values)
        buf.offsets.append(np.asarray(offsets, dtype=np.int64))
        buf.stamps.append(np.asarray(timestamps_ms, dtype=np.int64))
        buf.count += len(values)

    def pop_ready(self, caught_up: Callable[[str], bool], now: float | None = None) -> list[Cut]:
        """Every batch that may be processed now: full blocks first, then due partial blocks.

        ``caught_up(key)`` is asked only for partitions holding a partial block that is due.
        """
        now = self._clock() if now is None else now
        cuts: list[Cut] = []
        for key in list(self._buffers):
            cuts += self._full_blocks(key)
            buf = self._buffers.get(key)
            if buf and buf.count and now - buf.first_arrival >= self.max_wait_s and caught_up(key):
                offsets, _ = buf.columns()
                cuts.append(self._take(key, buf.count, int(offsets[-1]) + 1))
        return cuts

    def _full_blocks(self, key: str) -> list[Cut]:
        cuts = []
        while (buf := self._buffers.get(key)) is not None:
            offsets, _ = buf.columns()
            end = (int(offsets[0]) // self.batch_size + 1) * self.batch_size
            if int(offsets[-1]) < end - 1:
                break
            n = int(np.searchsorted(offsets, end, side="left"))
            cuts.append(self._take(key, n, end))
        return cuts

    def _take(self, key: str, n: int, end: int) -> Cut:
        buf = self._buffers[key]
        offsets, stamps = buf.columns()
        cut = Cut(key, buf.values[:n], offsets[:n], stamps[:n], end, buf.received_ms)
        if n == buf.count:
            del self._buffers[key]
        else:
            buf.values = buf.values[n:]
            buf.offsets, buf.stamps = [offsets[n:]], [stamps[n:]]
            buf.count -= n
        return cut

    def drop(self, keys: Iterable[str] | None = None) -> int:
        """Forget the buffered records of ``keys`` (default: all); returns how many were dropped."""
        keys = list(self._buffers) if keys is None else [k for k in keys if k in self._buffers]
        return sum(self._buffers.pop(k).count for k in keys)

    def buffered(self, key: str | None = None) -> int:
        """Records waiting in ``key``'s buffer, or in all buffers."""
        if key is not None:
            buf = self._buffers.get(key)
            return buf.count if buf else 0
        return sum(b.count for b in self._buffers.values())

    def keys(self) -> list[str]:
        return sorted(self._buffers)

    def next_due(self, now: float | None = None) -> float | None:
        """Seconds until the oldest partial block may be cut (0 when one is due), None when empty."""
        if not self._buffers:
            return None
        now = self._clock() if now is None else now
        first = min(b.first_arrival for b in self._buffers.values())
        return max(0.0, first + self.max_wait_s - now)
