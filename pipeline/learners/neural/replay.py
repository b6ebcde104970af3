"""A ring buffer of recent events whose sample is mixed into each online update.

Fine-tuning on one micro-batch at a time follows the newest data closely but forgets quickly and
overreacts to a noisy batch; replaying a uniform sample of the last ``capacity`` events (as hashed
inputs, see :class:`~pipeline.learners.neural.encode.HashedBatch`) smooths each step. Rows are
looked up again at replay time, so an id evicted meanwhile simply falls back to the shared row.
Each event keeps its example weight, so that a replayed event weighs in its loss as it did when
first learned (a snapshot from before weights were kept restores them as 1).

Examples
--------
>>> buf = ReplayBuffer(capacity=3, max_fields=1, max_dense=0)
>>> hb = HashedBatch(np.arange(1, 5, dtype=np.uint64), np.zeros(4, np.uint64), np.zeros((4, 1), np.uint64),
...                  np.zeros((4, 0), np.float32))
>>> buf.push(hb, np.array([1.0, 0.0, 1.0, 0.0]))
>>> len(buf), sorted(buf.sample(10, np.random.default_rng(0))[0].user.tolist())[:3]
(3, [2, 2, 2])
"""

from __future__ import annotations

import numpy as np

from pipeline.learners.neural.encode import HashedBatch

__all__ = ["ReplayBuffer"]

_FIELDS = ("user", "item", "cat", "dense", "label", "weight")


class ReplayBuffer:
    """The last ``capacity`` events' hashed inputs and labels (oldest overwritten first)."""

    def __init__(self, capacity: int, max_fields: int, max_dense: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"replay_size must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self._a = {
            "user": np.zeros(capacity, np.uint64),
            "item": np.zeros(capacity, np.uint64),
            "cat": np.zeros((capacity, max_fields), np.uint64),
            "dense": np.zeros((capacity, max_dense), np.float32),
            "label": np.zeros(capacity, np.float32),
            "weight": np.ones(capacity, np.float32),
        }
        self._pos = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, hb: HashedBatch, labels: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Keep ``hb``'s events with their labels and example weights (None: all 1)."""
        m = len(hb)
        skip = max(0, m - self.capacity)  # only the newest `capacity` of a huge batch survive
        idx = (self._pos + np.arange(m - skip)) % self.capacity
        w = np.ones(m, np.float32) if weights is None else weights
        for name, values in zip(_FIELDS, (hb.user, hb.item, hb.cat, hb.dense, labels, w)):
            self._a[name][idx] = values[skip:]
        self._pos = int((self._pos + m - skip) % self.capacity)
        self._size = min(self.capacity, self._size + m - skip)

    def sample(self, k: int, rng: np.random.Generator) -> tuple[HashedBatch, np.ndarray]:
        """``k`` events drawn uniformly with replacement, and their labels."""
        return self.sample_weighted(k, rng)[:2]

    def sample_weighted(self, k: int, rng: np.random.Generator) -> tuple[HashedBatch, np.ndarray, np.ndarray]:
        """:meth:`sample`, with the events' example weights."""
        idx = rng.integers(0, self._size, size=k)
        a = self._a
        hb = HashedBatch(a["user"][idx], a["item"][idx], a["cat"][idx], a["dense"][idx])
        return hb, a["label"][idx], a["weight"][idx]

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        return {f"replay.{k}": v.copy() for k, v in self._a.items()}, {"pos": self._pos, "size": self._size}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, int]) -> None:
        for k, v in self._a.items():
            if k == "weight" and "replay.weight" not in arrays:  # saved before weights were kept
                self._a[k] = np.ones_like(v)
                continue
            new = np.asarray(arrays[f"replay.{k}"])
            if new.shape != v.shape:
                raise ValueError(f"replay buffer {k} has shape {new.shape}, expected {v.shape}")
            self._a[k] = new.astype(v.dtype, copy=True)
        self._pos, self._size = int(meta["pos"]), int(meta["size"])
