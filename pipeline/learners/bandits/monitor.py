"""What a bandit policy reports while it learns: recent rewards and a running off-policy value.

:class:`PolicyMonitor` keeps two windows over the last ``window`` *learned* events:

* the rewards of all of them (the ``streamlearn_bandit_reward_rate`` gauge is their mean, the
  logging policy's reward as the policy sees it);
* logged rounds that were evaluated before they were learned: the logging propensity, the
  reward, and the target probability the policy gave the logged item at that moment. Their SNIPS
  estimate (:mod:`pipeline.ope`) is the ``streamlearn_policy_value_estimate`` gauge: a running,
  prequential estimate of what the policy would earn if it chose instead of the logging policy.

:meth:`PolicyMonitor.evaluate` makes the rounds of a batch just before the policy learns it, at
a bounded cost whatever the batch size and catalogue: at most :data:`GAUGE_SAMPLE` events (a
uniform sample of those with a logging propensity at position 0 or without a position, since the
policy chooses one item), each against its own ``candidates`` where the event names them (the set
the logging policy chose from), else against the :data:`GAUGE_CANDIDATES` most-pulled arms (a
logged item outside them gets target probability 0), with about :data:`GAUGE_MC_BUDGET` Monte-Carlo draws
in all for Thompson sampling. Rounds carry the index of their event among the learned ones, so
that a sample still reports over exactly the last ``window`` events. Both windows are plain
arrays cut to size on every append (O(window) per batch, no per-event work).

Examples
--------
>>> m = PolicyMonitor(window=3)
>>> m.add_rounds(np.array([0, 1]), reward=np.array([1.0, 0.0]), pscore=np.array([0.5, 0.25]),
...              target_prob=np.array([1.0, 1.0]))
>>> m.add_rewards(np.array([1.0, 0.0]))
>>> m.reward_rate(), round(m.value(), 6)  # (2·1 + 4·0) / (2 + 4)
(0.5, 0.333333)
>>> m.add_rewards(np.array([1.0, 1.0]))  # event 0 leaves the window
>>> m.reward_rate(), m.value()
(0.6666666666666666, 0.0)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.errors import SnapshotError
from pipeline.events.candidates import logged_candidate_groups
from pipeline.features import FeatureBatch
from pipeline.learners.checks import integer
from pipeline.ope import SNIPS, LoggedBandit, OffPolicyEstimator

if TYPE_CHECKING:
    from pipeline.learners.bandits.base import BanditPolicy

__all__ = ["GAUGE_CANDIDATES", "GAUGE_MC_BUDGET", "GAUGE_SAMPLE", "PolicyMonitor"]

GAUGE_SAMPLE = 128
GAUGE_CANDIDATES = 512
#: Monte-Carlo draws of one batch's evaluation in all (per event: this over events x candidates,
#: within [1, 32]); per-event estimates are unbiased whatever their number (one draw: did the
#: policy's sample pick the logged item) and their noise averages out over the window
GAUGE_MC_BUDGET = 1 << 16

_ROUND_COLUMNS = ("event", "reward", "pscore", "target_prob")


class PolicyMonitor:
    """Recent rewards and evaluated rounds of one policy (see the module docstring)."""

    def __init__(self, window: int):
        self.window = integer("gauge_window", window, 1)
        #: events learned so far (the index the next learned event will have)
        self.learned = 0
        self._rewards = np.zeros(0)
        self._rounds = {c: np.zeros(0) for c in _ROUND_COLUMNS}

    def add_rewards(self, rewards: np.ndarray) -> None:
        """Absorb the rewards of a learned batch (after its rounds were added)."""
        self._rewards = np.concatenate([self._rewards, np.asarray(rewards, np.float64)])[-self.window :]
        self.learned += len(rewards)
        self._prune()

    def add_rounds(
        self, offsets: np.ndarray, reward: np.ndarray, pscore: np.ndarray, target_prob: np.ndarray
    ) -> None:
        """Rounds of the batch about to be learned; ``offsets`` are their positions in that batch."""
        new = {
            "event": self.learned + np.asarray(offsets, np.float64),
            "reward": reward,
            "pscore": pscore,
            "target_prob": target_prob,
        }
        for c in _ROUND_COLUMNS:
            self._rounds[c] = np.concatenate([self._rounds[c], np.asarray(new[c], np.float64)])

    def evaluate(self, policy: BanditPolicy, batch: FeatureBatch, X: np.ndarray, rows: np.ndarray) -> None:
        """Add the rounds of ``batch`` as ``policy`` sees them now (call it before it learns the batch).

        ``X`` are the policy's contexts of the batch and ``rows`` the logged items' arm rows. An
        event with its own ``candidates`` is evaluated on that set, the others on the most-pulled arms.
        """
        p = batch.events.propensity
        idx = np.flatnonzero(np.isfinite(p) & (p > 0) & (p <= 1) & (batch.events.position <= 0))
        if not len(idx):
            return
        rng = policy._eval_rng()
        if len(idx) > GAUGE_SAMPLE:
            idx = np.sort(rng.choice(idx, GAUGE_SAMPLE, replace=False))
        target = np.zeros(len(idx))
        own = np.zeros(len(idx), bool)
        for at, ids, where in logged_candidate_groups(batch.events, idx):
            n_mc = int(np.clip(GAUGE_MC_BUDGET // (len(idx) * ids.shape[1]), 1, 32))
            probs, _ = policy.distribution(X[idx[at]], ids, rng, n_mc)
            target[at] = probs[np.arange(len(at)), where]
            own[at] = True
        rest = np.flatnonzero(~own)
        if len(rest):
            cand = _top_arms(policy._pulls[: policy.n_arms], GAUGE_CANDIDATES)
            column = np.full(policy.n_arms, -1, np.int64)
            column[cand] = np.arange(len(cand))
            where = column[rows[idx[rest]]]
            n_mc = int(np.clip(GAUGE_MC_BUDGET // (len(idx) * max(len(cand), 1)), 1, 32))
            probs, _ = policy._distribution(X[idx[rest]], cand, rng, n_mc)
            target[rest] = np.where(where >= 0, probs[np.arange(len(rest)), np.maximum(where, 0)], 0.0)
        self.add_rounds(idx, batch.labels[idx], p[idx], target)

    def _prune(self) -> None:
        keep = self._rounds["event"] >= self.learned - self.window
        if not keep.all():
            self._rounds = {c: v[keep] for c, v in self._rounds.items()}

    def reward_rate(self) -> float:
        """Mean reward of the last ``window`` learned events (NaN before any)."""
        return float(self._rewards.mean()) if len(self._rewards) else math.nan

    def value(self, estimator: OffPolicyEstimator | None = None) -> float:
        """The estimator's value (default SNIPS) over the window's rounds (NaN when undefined)."""
        r = self._rounds
        if not len(r["reward"]):
            return math.nan
        data = LoggedBandit(reward=r["reward"], pscore=r["pscore"], target_prob=r["target_prob"])
        return (estimator or SNIPS()).estimate_policy_value(data)

    # -- state ------------------------------------------------------------------------------------------
    def tables(self) -> dict[str, pa.Table]:
        """The windows as two tables (copies), for the policy's state bundle."""
        return {
            "recent_rewards": pa.table({"reward": pa.array(self._rewards.copy())}),
            "recent_rounds": pa.table({c: pa.array(v.copy()) for c, v in self._rounds.items()}),
        }

    def load(self, tables: dict[str, pa.Table], learned: int) -> None:
        """Restore from :meth:`tables`; a state without them (an older snapshot) starts empty."""
        self.learned = int(learned)
        if "recent_rewards" not in tables or "recent_rounds" not in tables:
            self._rewards = np.zeros(0)
            self._rounds = {c: np.zeros(0) for c in _ROUND_COLUMNS}
            return
        rounds = tables["recent_rounds"]
        missing = [c for c in _ROUND_COLUMNS if c not in rounds.column_names]
        if missing or "reward" not in tables["recent_rewards"].column_names:
            raise SnapshotError(f"recent_rounds/recent_rewards tables lack columns {missing or ['reward']}")
        rewards = tables["recent_rewards"].column("reward").to_numpy().astype(np.float64)
        self._rewards = rewards[-self.window :]  # the window may have been configured smaller since
        self._rounds = {c: rounds.column(c).to_numpy().astype(np.float64) for c in _ROUND_COLUMNS}
        self._prune()


def _top_arms(pulls: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` most-pulled arms (all of them if there are fewer), in row order."""
    if len(pulls) <= k:
        return np.arange(len(pulls))
    return np.sort(np.argpartition(-pulls, k - 1)[:k])
