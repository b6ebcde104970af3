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
>>> w.push(len(x), segment_sums(x))   # [sum, count] blocks; returns what slid out
[(array([3., 2.]), 2)]
>>> w.total().tolist(), w.count          # blocks [3, 4] [5, 6] + open [7]; [1, 2] slid out
([25.0, 5.0], 5)
>>> h = Hysteresis(0.2, 0.1)
>>> [h.update(s) for s in (0.05, 0.25, 0.3, 0.15, 0.08, 0.21)]
[False, True, False, False, False, True]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Hysteresis", "SlidingBlocks", "segment_histograms", "segment_sums"]


class SlidingBlocks:
    """The last ``window`` items as at most ``n_blocks`` closed blocks, plus the open block.

    ``push(n, totals)`` appends ``n`` items; ``totals(bounds)`` must return the width-``width``
    sums of the items ``bounds[i] .. bounds[i + 1] - 1`` of what is being pushed, one row per
    segment (:func:`segment_sums` and :func:`segment_histograms` build them), so that a whole
    micro-batch fills its blocks in one vectorised call. The window's total is summed afresh
    from the blocks (there are few), never kept as a running sum that rounding would drift.
    """

    def __init__(self, width: int, window: int, n_blocks: int):
        if n_blocks < 1 or window < n_blocks:
            raise ValueError(f"need window >= n_blocks >= 1, got window={window}, n_blocks={n_blocks}")
        self.width = width
        self.block = window // n_blocks
        self.n_blocks = n_blocks
        self.reset()

    def reset(self) -> None:
        self._closed = np.zeros((0, self.width))  # oldest first
        self._closed_counts = np.zeros(0, np.int64)
        self._open = np.zeros(self.width)
        self._open_count = 0

    @property
    def count(self) -> int:
        """Items in the window (closed blocks and the open one)."""
        return int(self._closed_counts.sum()) + self._open_count

    @property
    def full(self) -> bool:
        """True once the window holds ``n_blocks`` closed blocks."""
        return len(self._closed) >= self.n_blocks

    def push(self, n: int, totals: Callable[[np.ndarray], np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """Append ``n`` items; returns the blocks that slid out, oldest first, as ``(sums, count)``."""
        if n <= 0:
            return []
        head = min(n, self.block - self._open_count)  # what completes the open block
        bounds = np.concatenate(([0], np.arange(head, n, self.block), [n]))
        sums = np.asarray(totals(bounds), dtype=np.float64).reshape(len(bounds) - 1, self.width)
        counts = np.diff(bounds)
        self._open = self._open + sums[0]
        self._open_count += int(counts[0])
        if self._open_count < self.block:
            return []
        # the open block is full; then every segment but a short last one is a whole block
        whole = counts[1:] == self.block
        closing = np.vstack([self._open[None, :], sums[1:][whole]])
        closing_counts = np.concatenate(([self._open_count], counts[1:][whole]))
        if len(counts) > 1 and not whole[-1]:
            self._open, self._open_count = sums[-1].copy(), int(counts[-1])
        else:
            self._open, self._open_count = np.zeros(self.width), 0
        return self._close(closing, closing_counts)

    def add_block(self, sums: np.ndarray, count: int) -> list[tuple[np.ndarray, int]]:
        """Append a whole block (e.g. one that slid out of another window); returns what slid out."""
        evicted = self.seal()
        block = np.asarray(sums, dtype=np.float64).reshape(1, self.width)
        return evicted + self._close(block, np.array([int(count)], np.int64))

    def add_blocks(self, blocks: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, int]]:
        """:meth:`add_block` for each of ``blocks`` in order, in one step."""
        if not blocks:
            return []
        evicted = self.seal()
        sums = np.vstack([np.asarray(b, dtype=np.float64).reshape(1, self.width) for b, _ in blocks])
        return evicted + self._close(sums, np.array([c for _, c in blocks], np.int64))

    def seal(self) -> list[tuple[np.ndarray, int]]:
        """Close the open block now, even if it is not full; returns the blocks that slid out."""
        if self._open_count == 0:
            return []
        block, count = self._open[None, :], np.array([self._open_count], np.int64)
        self._open, self._open_count = np.zeros(self.width), 0
        return self._close(block, count)

    def _close(self, blocks: np.ndarray, counts: np.ndarray) -> list[tuple[np.ndarray, int]]:
        closed = np.vstack([self._closed, blocks])
        closed_counts = np.concatenate([self._closed_counts, counts])
        cut = max(0, len(closed) - self.n_blocks)
        self._closed, self._closed_counts = closed[cut:], closed_counts[cut:]
        return [(closed[i].copy(), int(closed_counts[i])) for i in range(cut)]

    def total(self) -> np.ndarray:
        """Sum over the window."""
        return self._closed.sum(axis=0) + self._open

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        blocks = np.vstack([self._closed, self._open[None, :]])
        counts = np.concatenate([self._closed_counts, [self._open_count]]).astype(np.int64)
        return {"blocks": blocks, "counts": counts, "sum": self._closed.sum(axis=0)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        blocks, counts = np.asarray(arrays["blocks"], np.float64), np.asarray(arrays["counts"], np.int64)
        if blocks.shape[1:] != (self.width,):
            raise ValueError(f"window state has width {blocks.shape[1:]}, expected {self.width}")
        # "sum" is informational: the total is summed from the blocks, so a restore continues exactly
        self._closed, self._closed_counts = blocks[:-1].copy(), counts[:-1].copy()
        self._open = blocks[-1].copy()
        self._open_count = int(counts[-1])


def segment_sums(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``totals`` for :meth:`SlidingBlocks.push` of values ``x`` into ``[sum, count]`` blocks."""

    def totals(bounds: np.ndarray) -> np.ndarray:
        return np.stack([np.add.reduceat(x, bounds[:-1]), np.diff(bounds)], axis=1)

    return totals


def segment_histograms(idx: np.ndarray, width: int) -> Callable[[np.ndarray], np.ndarray]:
    """``totals`` for :meth:`SlidingBlocks.push` of bin indices ``idx`` into ``width``-bin histograms."""

    def totals(bounds: np.ndarray) -> np.ndarray:
        k = len(bounds) - 1
        segment = np.repeat(np.arange(k), np.diff(bounds))
        return np.bincount(segment * width + idx, minlength=k * width).reshape(k, width)

    return totals


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
