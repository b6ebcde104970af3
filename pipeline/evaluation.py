"""Prequential evaluation: AUC, logloss, calibration and CTR over sliding windows.

Predictions are scored *before* the learner sees the labels (the runner guarantees the order),
so these are honest online estimates. A label counts as positive when it is > 0 (graded labels
such as order values are positive when non-zero); logloss uses labels clipped to [0, 1].

Examples
--------
>>> import numpy as np
>>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
0.75
>>> round(logloss(np.array([1, 0]), np.array([0.9, 0.2])), 6)
0.164252
>>> w = WindowedMetrics(window=3)
>>> w.update(np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 0, 1, 0]))
>>> w.get()["auc"], w.get()["n"]
(1.0, 3)
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

__all__ = ["WindowedMetrics", "auc", "calibration_ratio", "logloss"]

_EPS = 1e-15


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with tied scores averaged); NaN if one class is absent."""
    y = np.asarray(labels) > 0
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s)  # any order within ties: a tie group shares its average rank
    s_sorted = s[order]
    # average 1-based rank of each tie group
    boundaries = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(s)]))
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(avg_rank, ends - starts)
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy with probabilities clipped to [1e-15, 1 - 1e-15]."""
    y = np.clip(np.asarray(labels, dtype=np.float64), 0.0, 1.0)
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    if len(y) == 0:
        return math.nan
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def calibration_ratio(labels: np.ndarray, probs: np.ndarray) -> float:
    """Σ predicted / Σ observed (1.0 is calibrated; > 1 over-predicts)."""
    observed = float(np.clip(labels, 0.0, 1.0).sum())
    return float(np.sum(probs)) / observed if observed > 0 else math.nan


class WindowedMetrics:
    """Metrics over the last ``window`` predictions of one learner (a ring buffer).

    ``get()`` computes AUC, logloss, calibration ratio and CTR on demand (O(window log window)),
    so callers decide how often to pay for it.
    """

    def __init__(self, window: int = 10_000):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._p = np.zeros(window)
        self._y = np.zeros(window)
        self._size = 0
        self._head = 0  # next write position
        self.seen = 0

    def update(self, probs: np.ndarray, labels: np.ndarray) -> None:
        self.seen += len(probs)
        probs = np.asarray(probs, dtype=np.float64)[-self.window :]
        labels = np.asarray(labels, dtype=np.float64)[-self.window :]
        k = len(probs)
        idx = (self._head + np.arange(k)) % self.window
        self._p[idx] = probs
        self._y[idx] = labels
        self._head = int((self._head + k) % self.window)
        self._size = min(self.window, self._size + k)

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """(probs, labels) in arrival order."""
        if self._size < self.window:
            return self._p[: self._size].copy(), self._y[: self._size].copy()
        order = (self._head + np.arange(self.window)) % self.window
        return self._p[order], self._y[order]

    def get(self) -> dict[str, float]:
        p, y = self.values()
        return {
            "auc": auc(y, p),
            "logloss": logloss(y, p),
            "calibration": calibration_ratio(y, p),
            "ctr": float(np.clip(y, 0, 1).mean()) if len(y) else math.nan,
            "n": len(y),
        }

    def state(self) -> pa.Table:
        p, y = self.values()
        return pa.table({"prob": p, "label": y})

    def load_state(self, table: pa.Table, seen: int) -> None:
        self.__init__(self.window)
        self.update(table.column("prob").to_numpy(), table.column("label").to_numpy())
        self.seen = seen
