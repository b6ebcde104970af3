"""ε-greedy over per-arm ridge regressions, with exact propensities.

With probability ``1 - ε`` the slate is the top k of the estimated rewards ``xᵀθ_a``; with
probability ``ε`` it is a uniformly random slate (k candidates drawn without replacement, in random
order). The probability that candidate a sits at slot j is therefore exactly
``(1 - ε)·[a is the greedy j-th] + ε / m`` for m candidates. With a bias-only context (``dim=1``
and contexts of ones) the estimate is the arm's ridge-shrunk mean reward.

Examples
--------
>>> policy = EpsilonGreedy(dim=1, epsilon=0.2, seed=0)
>>> policy.update(np.ones((2, 1)), np.array(["a", "b"]), np.array([0.0, 1.0]))
>>> chosen, p = policy.select(np.ones((1, 1)), np.array(["a", "b", "c", "d"]))
>>> chosen.tolist(), p.round(12).tolist()  # 0.8 + 0.2 / 4
([[1]], [[0.85]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.learners.bandits.base import DEFAULT_DIM, DEFAULT_DRIFT_DELTA
from pipeline.learners.bandits.kernels import greedy_distribution, tie_propensities, top_k
from pipeline.learners.bandits.linucb import RidgeArms
from pipeline.learners.checks import number

__all__ = ["EpsilonGreedy"]


class EpsilonGreedy(RidgeArms):
    """ε-greedy on ridge estimates; greedy ties are broken at random (the propensities count them).

    Parameters
    ----------
    dim
        Context dimension.
    epsilon
        Exploration probability in [0, 1].
    lam
        Ridge prior of a new arm (> 0).
    embedding_checkpoint, embedding_parts
        Hybrid contexts with a pretrained ranker's embeddings (None: features only); see
        :class:`~pipeline.learners.bandits.base.BanditPolicy`, "Embedding contexts".
    gamma, seed, exclude_features, include_user, importance_weighting, max_weight, gauge_window, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`.
    """

    kind = "epsilon_greedy"

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        epsilon: float = 0.1,
        lam: float = 1.0,
        gamma: float = 1.0,
        seed: int = 0,
        exclude_features: Sequence[str] = (),
        include_user: bool = False,
        importance_weighting: bool = False,
        max_weight: float = 100.0,
        gauge_window: int = 10_000,
        embedding_checkpoint: str | None = None,
        embedding_parts: Sequence[str] = ("user",),
        reset_on_drift: bool = True,
        drift_delta: float = DEFAULT_DRIFT_DELTA,
        name: str | None = None,
    ):
        super().__init__(
            dim,
            lam=lam,
            gamma=gamma,
            seed=seed,
            exclude_features=exclude_features,
            include_user=include_user,
            importance_weighting=importance_weighting,
            max_weight=max_weight,
            gauge_window=gauge_window,
            embedding_checkpoint=embedding_checkpoint,
            embedding_parts=embedding_parts,
            reset_on_drift=reset_on_drift,
            drift_delta=drift_delta,
            name=name,
        )
        self.epsilon = number("epsilon", epsilon, 0.0, 1.0)

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        mean, _ = self._mean_var(X, rows, need_var=False)
        n, m = mean.shape
        greedy = top_k(mean, k, self._rng)
        explore = np.flatnonzero(self._rng.random(n) < self.epsilon)
        chosen = greedy.copy()
        if len(explore):
            if k == 1:
                chosen[explore, 0] = self._rng.integers(0, m, size=len(explore))
            else:
                # the order of iid uniform keys is a uniformly random permutation
                chosen[explore] = top_k(self._rng.random((len(explore), m)), k)
        props = (1.0 - self.epsilon) * tie_propensities(mean, chosen) + self.epsilon / m
        return chosen, props

    def _distribution(self, X, rows, rng, n_mc):
        mean, _ = self._mean_var(X, rows, need_var=False)
        m = mean.shape[1]
        return (1.0 - self.epsilon) * greedy_distribution(mean) + self.epsilon / m, mean
