"""Off-policy evaluation: the value of a target policy estimated from another policy's logs.

Inputs are arrays over the n logged rounds (a :class:`LoggedBandit`): the reward ``r_i`` of the
logged action, its logging propensity ``p_i = π₀(a_i|x_i)``, the target's probability of that
action ``π_e(a_i|x_i)``, and for DR a reward model's ``q̂(x_i, a_i)`` and the target's expected
reward under the model ``q_e(x_i) = Σ_a π_e(a|x_i) q̂(x_i, a)``. With ``w_i = π_e / p_i``:

* IPS    ``V = (1/n) Σ w_i r_i``
* SNIPS  ``V = Σ w_i r_i / Σ w_i``
* DR     ``V = (1/n) Σ [q_e(x_i) + w_i (r_i − q̂(x_i, a_i))]``
* Replay (Li et al., WSDM 2011) ``V = mean of r_i over the rounds where the target's action
  equals the logged one``; unbiased when the log was uniformly random.

As in Open Bandit Pipeline, each estimator implements one private ``_estimate_round_rewards``
(per-round terms whose mean is the estimate); :meth:`OffPolicyEstimator.estimate_policy_value` and
:meth:`~OffPolicyEstimator.estimate_interval` are built once on top, and :func:`evaluate` runs many
estimators over the same data. Intervals are normal approximations ``V ± z·se`` (IPS and DR: the
standard error of the mean of the round terms; SNIPS and Replay: the delta method,
``se = sqrt(Σ w_i² (r_i − V)²) / Σ w_i``) or seeded percentile bootstraps. The effective sample size
is ``(Σ w)² / Σ w²``. :func:`replay_policy` runs Li et al.'s replay of a *learning* policy.

Examples
--------
>>> data = LoggedBandit(reward=[1.0, 0.0, 1.0], pscore=[0.5, 0.5, 0.25], target_prob=[1.0, 0.0, 0.5])
>>> IPS().estimate_policy_value(data)  # (2·1 + 0 + 2·1) / 3
1.3333333333333333
>>> SNIPS().estimate_policy_value(data)  # (2 + 2) / (2 + 0 + 2)
1.0
>>> round(evaluate(data)["IPS"].ess, 6)  # 4² / 8
2.0
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, fields, replace
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from pipeline.learners.base import Policy

__all__ = [
    "IPS",
    "SNIPS",
    "DoublyRobust",
    "Interval",
    "LoggedBandit",
    "OffPolicyEstimator",
    "Replay",
    "effective_sample_size",
    "evaluate",
    "replay_policy",
]

_FLOATS = ("pscore", "target_prob", "q_hat", "q_target")
_ACTIONS = ("action", "target_action")


def _float_array(name: str, values, n: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} must have length {n} (as reward), got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


@dataclass(frozen=True)
class LoggedBandit:
    """Logged rounds for off-policy evaluation; every array has one entry per round.

    Parameters
    ----------
    reward
        Observed reward of the logged action.
    pscore
        Logging propensity ``π₀(a_i|x_i)`` in (0, 1].
    target_prob
        Target policy's probability ``π_e(a_i|x_i)`` of the logged action, in [0, 1].
    q_hat
        Reward model's estimate for the logged action (DR).
    q_target
        ``Σ_a π_e(a|x_i) q̂(x_i, a)``, the target's expected reward under the model (DR).
    action, target_action
        Logged action and the target policy's action (Replay); any comparable values.
    """

    reward: np.ndarray
    pscore: np.ndarray | None = None
    target_prob: np.ndarray | None = None
    q_hat: np.ndarray | None = None
    q_target: np.ndarray | None = None
    action: np.ndarray | None = None
    target_action: np.ndarray | None = None

    def __post_init__(self):
        reward = _float_array("reward", self.reward, None)
        n = len(reward)
        object.__setattr__(self, "reward", reward)
        for name in _FLOATS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _float_array(name, getattr(self, name), n))
        for name in _ACTIONS:
            if getattr(self, name) is not None:
                arr = np.asarray(getattr(self, name))
                if arr.shape != (n,):
                    raise ValueError(f"{name} must have shape ({n},) (as reward), got {arr.shape}")
                object.__setattr__(self, name, arr)
        if self.pscore is not None and n and (self.pscore.min() <= 0 or self.pscore.max() > 1):
            raise ValueError("pscore must lie in (0, 1]")
        if self.target_prob is not None and n and (self.target_prob.min() < 0 or self.target_prob.max() > 1):
            raise ValueError("target_prob must lie in [0, 1]")

    def __len__(self) -> int:
        return len(self.reward)

    def take(self, indices: np.ndarray) -> LoggedBandit:
        """The rounds at ``indices`` (with repeats: bootstrap resamples)."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name)[indices]
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(Σ w)² / Σ w²`` (0 when every weight is 0).

    >>> effective_sample_size(np.array([1.0, 1.0, 2.0]))
    2.6666666666666665
    """
    w = np.asarray(weights, dtype=np.float64)
    sq = float(np.dot(w, w))
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval at level ``1 - alpha``."""

    estimator: str
    value: float
    lower: float
    upper: float
    std_error: float
    ess: float
    n: int
    alpha: float
    method: str


class OffPolicyEstimator(abc.ABC):
    """An estimator of a target policy's value: subclasses define the per-round terms."""

    name: ClassVar[str] = "estimator"
    #: LoggedBandit fields the estimator needs
    requires: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def _estimate_round_rewards(self, data: LoggedBandit) -> np.ndarray:
        """Per-round terms whose mean is the estimate."""

    @abc.abstractmethod
    def _weights(self, data: LoggedBandit) -> np.ndarray:
        """Importance weights of the rounds (for the effective sample size)."""

    def _std_error(self, data: LoggedBandit, rounds: np.ndarray) -> float:
        n = len(rounds)
        return float(rounds.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    def applicable(self, data: LoggedBandit) -> bool:
        """Whether ``data`` holds every field this estimator needs."""
        return all(getattr(data, f) is not None for f in self.requires)

    def _check(self, data: LoggedBandit) -> None:
        if not isinstance(data, LoggedBandit):
            raise TypeError(f"data must be a LoggedBandit, got {type(data).__name__}")
        for f in self.requires:
            if getattr(data, f) is None:
                raise ValueError(f"{f} is required by {self.name}")

    def estimate_policy_value(self, data: LoggedBandit) -> float:
        """The estimated value of the target policy (NaN on an empty log)."""
        self._check(data)
        return float(self._estimate_round_rewards(data).mean()) if len(data) else math.nan

    def estimate_interval(
        self,
        data: LoggedBandit,
        alpha: float = 0.05,
        method: str = "normal",
        n_bootstrap: int = 1000,
        seed: int = 0,
    ) -> Interval:
        """The estimate with a ``1 - alpha`` interval: ``method`` is "normal" or "bootstrap".

        The bootstrap draws ``n_bootstrap`` resamples of the rounds with a seeded generator and
        reports percentile bounds and the resamples' standard deviation; resamples whose estimate
        is undefined (no positive weight) are left out.
        """
        self._check(data)
        if not (isinstance(alpha, float) and 0 < alpha < 1):
            raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}")
        if method not in ("normal", "bootstrap"):
            raise ValueError(f"method must be 'normal' or 'bootstrap', got {method!r}")
        n = len(data)
        value = self.estimate_policy_value(data)
        ess = effective_sample_size(self._weights(data))
        if method == "normal":
            se = self._std_error(data, self._estimate_round_rewards(data)) if n else math.nan
            z = NormalDist().inv_cdf(1 - alpha / 2)
            return Interval(self.name, value, value - z * se, value + z * se, se, ess, n, alpha, method)
        if not (isinstance(n_bootstrap, int) and n_bootstrap >= 2):
            raise ValueError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}")
        rng = np.random.default_rng(seed)
        boot = np.array(
            [self.estimate_policy_value(data.take(rng.integers(0, n, n))) for _ in range(n_bootstrap)]
        )
        boot = boot[np.isfinite(boot)]  # resamples without any weight (SNIPS, Replay) estimate nothing
        if len(boot) < 2:
            return Interval(self.name, value, math.nan, math.nan, math.nan, ess, n, alpha, method)
        lower, upper = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        se = float(boot.std(ddof=1))
        return Interval(self.name, value, float(lower), float(upper), se, ess, n, alpha, method)


def _ratio_std_error(w: np.ndarray, r: np.ndarray) -> float:
    """Delta-method standard error of ``Σ w r / Σ w``."""
    total = float(w.sum())
    if total <= 0:
        return math.nan
    value = float(np.dot(w, r)) / total
    return math.sqrt(float(np.dot(w * w, (r - value) ** 2))) / total


class IPS(OffPolicyEstimator):
    """Inverse propensity scoring; ``max_weight`` clips the weights (clipped IPS, biased)."""

    name = "IPS"
    requires = ("pscore", "target_prob")

    def __init__(self, max_weight: float | None = None):
        if max_weight is not None and not (max_weight > 0):
            raise ValueError(f"max_weight must be > 0 or None, got {max_weight!r}")
        self.max_weight = max_weight

    def _weights(self, data: LoggedBandit) -> np.ndarray:
        w = data.target_prob / data.pscore
        return w if self.max_weight is None else np.minimum(w, self.max_weight)

    def _estimate_round_rewards(self, data: LoggedBandit) -> np.ndarray:
        return self._weights(data) * data.reward


class SNIPS(IPS):
    """Self-normalised IPS: ``Σ w r / Σ w`` (NaN when every weight is 0)."""

    name = "SNIPS"

    def _estimate_round_rewards(self, data: LoggedBandit) -> np.ndarray:
        w = self._weights(data)
        mean_w = w.mean() if len(w) else 0.0
        return w * data.reward / mean_w if mean_w > 0 else np.full(len(w), math.nan)

    def _std_error(self, data: LoggedBandit, rounds: np.ndarray) -> float:
        return _ratio_std_error(self._weights(data), data.reward)


class DoublyRobust(IPS):
    """Doubly robust: the model's value plus the IPS-weighted residual of the logged action."""

    name = "DR"
    requires = ("pscore", "target_prob", "q_hat", "q_target")

    def _estimate_round_rewards(self, data: LoggedBandit) -> np.ndarray:
        return data.q_target + self._weights(data) * (data.reward - data.q_hat)


class Replay(OffPolicyEstimator):
    """Li et al.'s replay: mean reward over the rounds where ``target_action == action``.

    The effective sample size of its interval is the number of matches.
    """

    name = "Replay"
    requires = ("action", "target_action")

    def _weights(self, data: LoggedBandit) -> np.ndarray:
        return (data.action == data.target_action).astype(np.float64)

    def _estimate_round_rewards(self, data: LoggedBandit) -> np.ndarray:
        match = self._weights(data)
        rate = match.mean() if len(match) else 0.0
        return match * data.reward / rate if rate > 0 else np.full(len(match), math.nan)

    def _std_error(self, data: LoggedBandit, rounds: np.ndarray) -> float:
        return _ratio_std_error(self._weights(data), data.reward)


def evaluate(
    data: LoggedBandit,
    estimators: list[OffPolicyEstimator] | None = None,
    alpha: float = 0.05,
    method: str = "normal",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Interval]:
    """Run several estimators over the same log: ``{estimator name: Interval}``.

    By default every estimator among IPS, SNIPS, DR and Replay whose inputs ``data`` holds.
    """
    if estimators is None:
        estimators = [e for e in (IPS(), SNIPS(), DoublyRobust(), Replay()) if e.applicable(data)]
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators must have distinct names, got {names}")
    return {e.name: e.estimate_interval(data, alpha, method, n_bootstrap, seed) for e in estimators}


def replay_policy(
    policy: Policy,
    contexts: np.ndarray,
    candidates: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    batch_size: int = 1,
    learn: bool = True,
    alpha: float = 0.05,
) -> Interval:
    """Replay a (learning) policy through a uniformly-random log (Li et al., 2011, Algorithm 3).

    For each batch of logged rounds the policy chooses one candidate per context; rounds where it
    chooses the logged action count, and (with ``learn``) only those are fed back to the policy,
    so it sees exactly the feedback it would have seen online. ``batch_size=1`` is the original
    per-event algorithm; larger batches delay updates as a micro-batched deployment would.

    Parameters
    ----------
    policy
        Any :class:`~pipeline.learners.base.Policy` with ``select`` and ``update`` (it is modified).
    contexts
        ``[n, d]`` logged contexts.
    candidates
        Arms offered: ``[m]`` for every round or ``[n, m]``.
    actions
        Logged action of every round, as a position into its candidates.
    rewards
        Logged rewards.

    Returns
    -------
    Interval
        The Replay estimate (normal interval) with ``ess`` = the number of matched rounds.
    """
    X = np.asarray(contexts, dtype=np.float64)
    n = len(X)
    cand = np.asarray(candidates)
    a = np.asarray(actions)
    r = _float_array("rewards", rewards, n)
    if a.shape != (n,) or a.dtype.kind not in "iu":
        raise ValueError(f"actions must be {n} integer positions into candidates, got {a.dtype} {a.shape}")
    if cand.ndim not in (1, 2) or (cand.ndim == 2 and len(cand) != n):
        raise ValueError(f"candidates must have shape [m] or [n={n}, m], got {cand.shape}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    chosen = np.empty(n, np.int64)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        c = cand if cand.ndim == 1 else cand[sl]
        chosen[sl] = policy.select(X[sl], c, k=1)[0][:, 0]
        match = np.flatnonzero(chosen[sl] == a[sl])
        if learn and len(match):
            arms = c[a[sl][match]] if c.ndim == 1 else c[match, a[sl][match]]
            policy.update(X[sl][match], arms, r[sl][match])
    return Replay().estimate_interval(LoggedBandit(reward=r, action=a, target_action=chosen), alpha=alpha)
