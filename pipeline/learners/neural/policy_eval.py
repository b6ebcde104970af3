"""The ranker as a ranking policy, evaluated off-policy from the logged propensities.

The ranker scores events; a *policy* chooses one item among a request's candidates. The target
policy evaluated here is the ranker's softmax at temperature ``T`` over the candidate set::

    pi(a | x, C) = exp(z(x, a) / T) / sum_{b in C} exp(z(x, b) / T)

where ``z`` are the ranker's logits — the Plackett-Luce probability that ``a`` is ranked first, so
its estimated value is the click rate of the item it would put on top. ``T -> 0`` gives the greedy
(argmax) policy, whose importance weights ``1/p`` on matches and 0 elsewhere make for a small
effective sample; a moderate ``T`` trades a little of that sharpness for a usable ESS. The
logging policy must have had the same candidate set ``C``; the estimators
(:mod:`pipeline.ope`: IPS, SNIPS, DR) see only the logged action's ``pi``, its propensity and, for
DR, the ranker's own click probabilities ``q(x, a) = sigmoid(z)`` as the reward model.

Examples
--------
>>> logits = np.log(np.array([[1.0, 3.0], [1.0, 1.0]]))
>>> ranking_policy(logits, temperature=1.0).tolist()
[[0.25, 0.75], [0.5, 0.5]]
>>> ranking_policy(logits, temperature=0.0).tolist()
[[0.0, 1.0], [1.0, 0.0]]
>>> rounds = logged_rounds(logits, np.array([1, 0]), reward=np.array([1.0, 0.0]),
...                        pscore=np.array([0.5, 0.5]), temperature=1.0)
>>> rounds.target_prob.tolist(), round(IPS().estimate_policy_value(rounds), 6)  # (0.75/0.5 + 0) / 2
([0.75, 0.5], 0.75)
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from pipeline.ope import IPS, SNIPS, DoublyRobust, Interval, LoggedBandit, evaluate

__all__ = ["ESTIMATORS", "PolicyValueWindow", "logged_rounds", "ranking_policy"]

#: estimators reported per window (their names are the ``estimator`` label of the gauge)
ESTIMATORS = ("IPS", "SNIPS", "DR")
_COLUMNS = ("reward", "pscore", "target_prob", "q_hat", "q_target")


def ranking_policy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``[n, K]`` probabilities of putting each candidate first (ties of the greedy policy: lowest index)."""
    z = np.asarray(logits, np.float64)
    if temperature <= 0:
        out = np.zeros_like(z)
        out[np.arange(len(z)), z.argmax(axis=1)] = 1.0
        return out
    z = z / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def logged_rounds(
    logits: np.ndarray, logged_index: np.ndarray, reward: np.ndarray, pscore: np.ndarray, temperature: float
) -> LoggedBandit:
    """The logged rounds as seen by the target policy, with the ranker as DR's reward model.

    ``logits[i, j]`` scores candidate j of request i; ``logged_index[i]`` is the logged item's column.
    """
    pi = ranking_policy(logits, temperature)
    q = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    rows = np.arange(len(pi))
    return LoggedBandit(
        reward=reward,
        pscore=pscore,
        target_prob=pi[rows, logged_index],
        q_hat=q[rows, logged_index],
        q_target=(pi * q).sum(axis=1),
    )


class PolicyValueWindow:
    """The last ``window`` logged rounds and the estimates over them (IPS, SNIPS, DR with ESS)."""

    def __init__(self, window: int):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"ope_window must be an integer >= 1, got {window!r}")
        self.window = window
        self._cols = {c: np.zeros(0) for c in _COLUMNS}
        self.last: dict[str, Interval] = {}

    def __len__(self) -> int:
        return len(self._cols["reward"])

    def update(self, rounds: LoggedBandit) -> dict[str, Interval]:
        """Add rounds (dropping the oldest beyond the window) and re-estimate."""
        for c in _COLUMNS:
            self._cols[c] = np.concatenate([self._cols[c], getattr(rounds, c)])[-self.window :]
        self.last = self.estimates()
        return self.last

    def estimates(self) -> dict[str, Interval]:
        if len(self) == 0:
            return {}
        data = LoggedBandit(**self._cols)
        return evaluate(data, [IPS(), SNIPS(), DoublyRobust()])

    def values(self) -> dict[str, float]:
        """``{estimator: value}`` of the last estimates, plus ``ESS`` (finite values only)."""
        out = {name: iv.value for name, iv in self.last.items() if math.isfinite(iv.value)}
        if self.last:
            out["ESS"] = next(iter(self.last.values())).ess
        return out

    def state(self) -> pa.Table:
        return pa.table({c: pa.array(v, pa.float64()) for c, v in self._cols.items()})

    def load_state(self, table: pa.Table) -> None:
        self._cols = {c: table.column(c).to_numpy().astype(np.float64)[-self.window :] for c in _COLUMNS}
        self.last = self.estimates()
