"""Bounded-memory sliding windows and alarm hysteresis, shared by every drift signal.

:class:`SlidingBlocks` keeps the last ``window`` items (plus the block being filled) as
``n_blocks`` per-block sums of a fixed width (a histogram, or a ``[sum, count]`` pair): memory is
``(n_blocks + 1) x width`` numbers whatever the stream's length, and the window slides by one
block at a time. :class:`Hysteresis` raises an
alarm when a score reaches the raise threshold and re-arms only once it has fallen to the clear one.

Examples
--------
>>> w = SlidingBlocks(width=2, window=4, n_blocks=2)
>>> x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
>>> w.push(len(x), lambda lo, hi: np.array([x[lo:hi].sum(), hi - lo]))   # returns what slid out
[(array([3., 2.]), 2)]
>>> w.total().tolist(), w.count          # blocks [3, 4] [5, 6] + open [7]; [1, 2] slid out
([25.0, 5.0], 5)
>>> h = Hysteresis(0.2, 0.1)
>>> [h.update(s) for s in (0.05, 0.25, 0.3, 0.15, 0.08, 0.21)]
[False, True, False, False, False, True]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

__all__ = ["Hysteresis", "SlidingBlocks"]


class SlidingBlocks:
    """The last ``window`` items as at most ``n_blocks`` closed blocks, plus the open block.

    ``push(n, totals)`` appends ``n`` items; ``totals(lo, hi)`` must return the width-``width``
    sum of items ``lo .. hi - 1`` of what is being pushed (so the caller stays vectorised).
    """

    def __init__(self, width: int, window: int, n_blocks: int):
        if n_blocks < 1 or window < n_blocks:
            raise ValueError(f"need window >= n_blocks >= 1, got window={window}, n_blocks={n_blocks}")
        self.width = width
        self.block = window // n_blocks
        self.n_blocks = n_blocks
        self.reset()

    def reset(self) -> None:
        self._closed: deque[np.ndarray] = deque()
        self._closed_counts: deque[int] = deque()
        self._sum = np.zeros(self.width)
        self._open = np.zeros(self.width)
        self._open_count = 0

    @property
    def count(self) -> int:
        """Items in the window (closed blocks and the open one)."""
        return sum(self._closed_counts) + self._open_count

    @property
    def full(self) -> bool:
        """True once the window holds ``n_blocks`` closed blocks."""
        return len(self._closed) >= self.n_blocks

    def push(self, n: int, totals: Callable[[int, int], np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """Append ``n`` items; returns the blocks that slid out, oldest first, as ``(sums, count)``."""
        evicted: list[tuple[np.ndarray, int]] = []
        lo = 0
        while lo < n:
            hi = min(n, lo + self.block - self._open_count)
            self._open += totals(lo, hi)
            self._open_count += hi - lo
            lo = hi
            if self._open_count == self.block:
                evicted += self.seal()
        return evicted

    def add_block(self, sums: np.ndarray, count: int) -> list[tuple[np.ndarray, int]]:
        """Append a whole block (e.g. one that slid out of another window); returns what slid out."""
        evicted = self.seal()
        self._open, self._open_count = np.asarray(sums, dtype=np.float64).copy(), int(count)
        return evicted + self.seal()

    def seal(self) -> list[tuple[np.ndarray, int]]:
        """Close the open block now, even if it is not full; returns the blocks that slid out."""
        if self._open_count == 0:
            return []
        self._closed.append(self._open)
        self._closed_counts.append(self._open_count)
        self._sum += self._open
        self._open = np.zeros(self.width)
        self._open_count = 0
        evicted = []
        while len(self._closed) > self.n_blocks:
            block = self._closed.popleft()
            self._sum -= block
            evicted.append((block, self._closed_counts.popleft()))
        return evicted

    def total(self) -> np.ndarray:
        """Sum over the window."""
        return self._sum + self._open

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        blocks = np.array([*self._closed, self._open]).reshape(-1, self.width)
        counts = np.array([*self._closed_counts, self._open_count], dtype=np.int64)
        return {"blocks": blocks, "counts": counts, "sum": self._sum.copy()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        blocks, counts = np.asarray(arrays["blocks"], np.float64), np.asarray(arrays["counts"], np.int64)
        if blocks.shape[1:] != (self.width,):
            raise ValueError(f"window state has width {blocks.shape[1:]}, expected {self.width}")
        self._closed = deque(b.copy() for b in blocks[:-1])
        self._closed_counts = deque(int(c) for c in counts[:-1])
        # the saved running sum, not a fresh one: a restored window must continue bit for bit
        self._sum = np.asarray(arrays["sum"], np.float64).copy()
        self._open = blocks[-1].copy()
        self._open_count = int(counts[-1])


class Hysteresis:
    """An alarm that is raised at ``raise_at`` and re-armed once the score falls to ``clear_at``."""

    def __init__(self, raise_at: float, clear_at: float):
        if not 0 <= clear_at <= raise_at:
            raise ValueError(f"need 0 <= clear_at <= raise_at, got raise_at={raise_at}, clear_at={clear_at}")
        self.raise_at = raise_at
        self.clear_at = clear_at
        self.active = False

    def update(self, score: float) -> bool:
        """True exactly when this score raises a new alarm."""
        if self.active:
            if score <= self.clear_at:
                self.active = False
            return False
        if score >= self.raise_at:
            self.active = True
            return True
        return False
