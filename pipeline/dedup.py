"""Stream hygiene: duplicate ``event_id`` suppression in a bounded window, and lateness.

Event ids are hashed to 64 bits (stable, :mod:`pipeline.hashing`); the window keeps the last
``window`` ids in a ring buffer plus a set for O(1) membership, so memory is bounded by
``window``. (At 1e6 ids the chance of any 64-bit collision is below 3e-8.)

Examples
--------
>>> import pyarrow as pa
>>> d = Deduplicator(window=2)
>>> d.filter(pa.array(["a", "b", "a"])).tolist()
[True, True, False]
>>> d.filter(pa.array(["c", "a"])).tolist()   # "a" has left the 2-id window after "c"
[True, True]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.hashing import hash_strings

__all__ = ["Deduplicator", "LatenessTracker"]


class Deduplicator:
    """Remembers the last ``window`` event ids; ``filter`` marks repeats inside the window."""

    def __init__(self, window: int = 100_000):
        if window < 0:
            raise ValueError(f"dedup window must be >= 0, got {window}")
        self.window = window
        self._ring = np.zeros(window, dtype=np.uint64)
        self._head = 0
        self._size = 0
        self._seen: set[int] = set()

    def filter(self, event_ids: pa.Array) -> np.ndarray:
        """Boolean mask: True for events to keep (first sighting within the window)."""
        if self.window == 0:
            return np.ones(len(event_ids), dtype=bool)
        return self.filter_hashes(hash_strings(event_ids, "event_id"))

    def filter_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """:meth:`filter` of ids already hashed (uint64, as :func:`~pipeline.hashing.hash_strings` makes them)."""
        n = len(hashes)
        if self.window == 0:
            return np.ones(n, dtype=bool)
        seen = self._seen
        ring = self._ring
        ids = hashes.tolist()
        before = len(seen)
        if n <= self.window and seen.isdisjoint(ids):
            seen.update(ids)
            if len(seen) - before < n:  # a repeat inside the batch: undo, and go event by event
                seen.difference_update(ids)
        if len(seen) - before == n:
            # the usual batch, no repeat at all: every id is kept, the oldest overflow leaves the
            # window, all in bulk (the loop below gives the same ring and set, event by event)
            evict = max(0, self._size + n - self.window)
            if evict:
                oldest = (self._head - self._size) % self.window
                seen.difference_update(ring[(oldest + np.arange(evict)) % self.window].tolist())
            ring[(self._head + np.arange(n)) % self.window] = hashes
            self._head = (self._head + n) % self.window
            self._size = min(self.window, self._size + n)
            return np.ones(n, dtype=bool)
        keep = np.zeros(n, dtype=bool)
        for i, h in enumerate(ids):
            if h in seen:
                continue
            keep[i] = True
            if self._size == self.window:
                seen.discard(int(ring[self._head]))
            else:
                self._size += 1
            ring[self._head] = h
            seen.add(h)
            self._head = (self._head + 1) % self.window
        return keep

    def state(self) -> np.ndarray:
        """The remembered ids, oldest first."""
        if self._size < self.window:
            return self._ring[: self._size].copy()
        return np.roll(self._ring, -self._head)

    def load_state(self, ids: np.ndarray) -> None:
        self.__init__(self.window)
        ids = np.asarray(ids, dtype=np.uint64)[-self.window :] if self.window else ids[:0]
        k = len(ids)
        self._ring[:k] = ids
        self._size = k
        self._head = k % self.window if self.window else 0
        self._seen = set(ids.tolist())


class LatenessTracker:
    """Counts events whose time is more than ``allowed_lateness_ms`` behind the latest seen so far.

    Late events are still applied (out-of-order data is normal); they are counted so that a
    producer falling behind is visible.
    """

    def __init__(self, allowed_lateness_ms: int = 3_600_000):
        self.allowed_lateness_ms = allowed_lateness_ms
        self.max_ts: int | None = None

    def update(self, ts: np.ndarray) -> int:
        """Absorb a batch of event times (ms); returns how many of them were late."""
        if len(ts) == 0:
            return 0
        start = ts[0] if self.max_ts is None else self.max_ts
        running = np.maximum.accumulate(np.concatenate(([start], ts)))[:-1]
        late = int((ts < running - self.allowed_lateness_ms).sum())
        self.max_ts = int(max(start, ts.max()))
        return late
