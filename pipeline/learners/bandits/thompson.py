"""Thompson sampling: linear-Gaussian (Agrawal & Goyal, 2013) and Beta-Bernoulli per item.

A decision draws one plausible reward per candidate from the posterior and shows the top k of the
draws; slates are therefore sampled without replacement from the posterior's ranking.

Propensities are estimated by Monte Carlo (there is no closed form for the probability that an
arm wins the argmax of independent posteriors): ``n_mc`` further independent draws are made for
every decision, and the propensity of the item at slot j is ``(1 + hits) / (1 + n_mc)``, where
hits counts the draws that put the same item at slot j. Counting the decision's own draw keeps the
estimate above zero (IPS divides by it) at a bias of at most ``1 / (1 + n_mc)``; its standard
error is about ``sqrt(p (1 - p) / n_mc)``. The cost is ``n_mc`` extra draws per candidate and
decision; ``n_mc = 0`` skips the estimate and returns NaN propensities.

Examples
--------
>>> policy = BetaThompson(seed=1, n_mc=200)
>>> policy.update(None, np.array(["good", "bad"] * 20), np.array([1.0, 0.0] * 20))
>>> chosen, p = policy.select(np.zeros((3, 1)), np.array(["good", "bad"]))
>>> chosen[:, 0].tolist(), bool((p > 0.99).all())
([0, 0, 0], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from pipeline.learners.bandits.arms import grow_rows
from pipeline.learners.bandits.base import DEFAULT_DIM, DEFAULT_DRIFT_DELTA, BanditPolicy
from pipeline.learners.bandits.kernels import BUDGET, top_k
from pipeline.learners.bandits.linucb import RidgeArms
from pipeline.learners.checks import integer, number

__all__ = ["BetaThompson", "LinearThompson", "mc_choice_probabilities", "mc_propensities"]


def mc_propensities(draw: Callable[[int], np.ndarray], chosen: np.ndarray, n_mc: int, m: int) -> np.ndarray:
    """Monte-Carlo slot probabilities ``(1 + hits) / (1 + n_mc)`` of the ``chosen`` slates.

    ``draw(s)`` returns ``s`` independent score draws ``[s, n, m]``; ``chosen`` is ``[n, k]``.
    """
    n, k = chosen.shape
    if n_mc == 0:
        return np.full((n, k), np.nan)
    hits = np.zeros((n, k))
    step = max(1, BUDGET // max(1, n * m))
    done = 0
    while done < n_mc:
        s = min(step, n_mc - done)
        scores = draw(s).reshape(s * n, m)
        hits += (top_k(scores, k).reshape(s, n, k) == chosen[None]).sum(axis=0)
        done += s
    return (1.0 + hits) / (1.0 + n_mc)


def mc_choice_probabilities(draw: Callable[[int], np.ndarray], n: int, m: int, n_mc: int) -> np.ndarray:
    """``[n, m]`` share of ``n_mc`` independent draws in which each candidate scores highest.

    ``draw(s)`` returns ``s`` score draws ``[s, n, m]``; ties go to the lower index, as in
    :func:`~pipeline.learners.bandits.kernels.top_k`. Unbiased for the probability that a decision
    picks the candidate, with standard error ``sqrt(p (1 - p) / n_mc)``.
    """
    hits = np.zeros(n * m)
    step = max(1, BUDGET // max(1, n * m))
    done = 0
    offsets = np.arange(n) * m
    while done < n_mc:
        s = min(step, n_mc - done)
        best = draw(s).reshape(s, n, m).argmax(axis=2)
        hits += np.bincount((best + offsets).ravel(), minlength=n * m)
        done += s
    return (hits / n_mc).reshape(n, m)


def _draws(policy_n_mc: int, n_mc: int | None) -> int:
    """Draws for a distribution: as asked, else the policy's own ``n_mc``, else 100."""
    return n_mc if n_mc is not None else (policy_n_mc or 100)


def _check_n_mc(n_mc) -> int:
    return integer("n_mc", n_mc, 0)


class LinearThompson(RidgeArms):
    """Linear Thompson sampling over per-arm ridge posteriors ``N(θ_a, v²A_a⁻¹)``.

    For one context the sampled score ``xᵀθ̃_a`` is ``N(xᵀθ_a, v²·xᵀA_a⁻¹x)``, so scores are drawn
    directly (independently per arm and per decision) instead of drawing ``θ̃_a`` in d dimensions.

    Parameters
    ----------
    dim
        Context dimension.
    v
        Posterior scale (exploration), >= 0. The default 0.3 assumes rewards in [0, 1] and context
        coordinates of about unit scale (see ``alpha`` of :class:`LinUCB`).
    lam
        Ridge prior of a new arm (> 0).
    n_mc
        Monte-Carlo draws per decision for the propensity (see the module docstring).
    embedding_checkpoint, embedding_parts
        Hybrid contexts with a pretrained ranker's embeddings (None: features only); see
        :class:`~pipeline.learners.bandits.base.BanditPolicy`, "Embedding contexts".
    gamma, seed, exclude_features, include_user, importance_weighting, max_weight, gauge_window, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`.
    """

    kind = "linear_ts"

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        v: float = 0.3,
        lam: float = 1.0,
        n_mc: int = 100,
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
        self.v = number("v", v, 0.0)
        self.n_mc = _check_n_mc(n_mc)

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        mean, var = self._mean_var(X, rows)
        sd = self.v * np.sqrt(np.maximum(var, 0.0))

        def draw(s: int) -> np.ndarray:
            return mean + sd * self._rng.standard_normal((s, *mean.shape))

        chosen = top_k(draw(1)[0], k)
        return chosen, mc_propensities(draw, chosen, self.n_mc, rows.shape[-1])

    def _distribution(self, X, rows, rng, n_mc):
        mean, var = self._mean_var(X, rows)
        sd = self.v * np.sqrt(np.maximum(var, 0.0))
        n, m = mean.shape

        def draw(s: int) -> np.ndarray:
            return mean + sd * rng.standard_normal((s, n, m))

        return mc_choice_probabilities(draw, n, m, _draws(self.n_mc, n_mc)), mean


class BetaThompson(BanditPolicy):
    """Beta-Bernoulli Thompson sampling per item; ignores the context.

    Every arm has a ``Beta(alpha, beta)`` posterior over its reward rate, starting from the prior
    ``(alpha_prior, beta_prior)`` or from a per-item prior set with :meth:`set_prior`. A reward r
    in [0, 1] adds ``w·r`` to alpha and ``w·(1 - r)`` to beta (fractional rewards as in Agrawal &
    Goyal's Bernoulli trick, in expectation). Discounting moves both towards the arm's prior.

    Parameters
    ----------
    alpha_prior, beta_prior
        Default prior of a new arm (> 0).
    n_mc
        Monte-Carlo draws per decision for the propensity (see the module docstring).
    gamma, seed, importance_weighting, max_weight, gauge_window, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`.
    """

    kind = "beta_ts"
    uses_context = False

    def __init__(
        self,
        alpha_prior: float = 1.0,
        beta_prior: float = 1.0,
        n_mc: int = 100,
        gamma: float = 1.0,
        seed: int = 0,
        importance_weighting: bool = False,
        max_weight: float = 100.0,
        gauge_window: int = 10_000,
        reset_on_drift: bool = True,
        drift_delta: float = DEFAULT_DRIFT_DELTA,
        name: str | None = None,
    ):
        super().__init__(
            1,
            gamma=gamma,
            seed=seed,
            importance_weighting=importance_weighting,
            max_weight=max_weight,
            gauge_window=gauge_window,
            reset_on_drift=reset_on_drift,
            drift_delta=drift_delta,
            name=name,
        )
        self.alpha_prior = number("alpha_prior", alpha_prior, 0.0, low_open=True)
        self.beta_prior = number("beta_prior", beta_prior, 0.0, low_open=True)
        self.n_mc = _check_n_mc(n_mc)
        self._alpha = np.zeros(0)
        self._beta = np.zeros(0)
        self._a0 = np.zeros(0)
        self._b0 = np.zeros(0)

    def _grow(self, n_old: int, n_new: int) -> None:
        self._alpha = grow_rows(self._alpha, n_old, n_new, self.alpha_prior)
        self._beta = grow_rows(self._beta, n_old, n_new, self.beta_prior)
        self._a0 = grow_rows(self._a0, n_old, n_new, self.alpha_prior)
        self._b0 = grow_rows(self._b0, n_old, n_new, self.beta_prior)

    def set_prior(self, arms, alpha, beta) -> None:
        """Give ``arms`` an informative prior (e.g. from a CTR model), keeping their evidence."""
        arms = np.asarray(arms)
        rows = self._rows(arms, "arms")
        a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), rows.shape)
        b = np.broadcast_to(np.asarray(beta, dtype=np.float64), rows.shape)
        for name, val in (("alpha", a), ("beta", b)):
            if not (np.isfinite(val).all() and (val > 0).all()):
                raise ValueError(f"{name} must be finite and > 0")
        self._alpha[rows] += a - self._a0[rows]
        self._beta[rows] += b - self._b0[rows]
        self._a0[rows], self._b0[rows] = a, b

    def update(self, contexts, arms, rewards, weights=None, action_features=None) -> None:
        """As :meth:`BanditPolicy.update`; ``contexts`` may be None and rewards must lie in [0, 1]."""
        r = np.asarray(rewards, dtype=np.float64)
        if r.size and (np.nanmin(r) < 0 or np.nanmax(r) > 1):
            raise ValueError("rewards must lie in [0, 1] for Beta-Bernoulli Thompson sampling")
        super().update(contexts, arms, rewards, weights, action_features)

    def _mean_var(self, X: np.ndarray, rows: np.ndarray, need_var: bool = True):
        a, b = self._alpha[rows], self._beta[rows]
        shape = (X.shape[0], *rows.shape[-1:])
        mean = np.broadcast_to(a / (a + b), shape)
        var = np.broadcast_to(a * b / ((a + b) ** 2 * (a + b + 1)), shape) if need_var else None
        return mean, var

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._alpha[rows], self._beta[rows]
        shape = (X.shape[0], rows.shape[-1])

        def draw(s: int) -> np.ndarray:
            return self._rng.beta(a, b, size=(s, *shape))

        chosen = top_k(draw(1)[0], k)
        return chosen, mc_propensities(draw, chosen, self.n_mc, rows.shape[-1])

    def _distribution(self, X, rows, rng, n_mc):
        a, b = self._alpha[rows], self._beta[rows]
        n, m = X.shape[0], rows.shape[-1]
        mean = np.broadcast_to(a / (a + b), (n, m))
        if rows.ndim == 1:
            # no context: every row has the same distribution, so one estimate serves them all
            # (with the draws of up to 16 rows: far cheaper than a draw per row and candidate)
            draws = _draws(self.n_mc, n_mc) * min(n, 16)

            def draw_one(s: int) -> np.ndarray:
                return rng.beta(a, b, size=(s, 1, m))

            return np.broadcast_to(mc_choice_probabilities(draw_one, 1, m, draws), (n, m)), mean

        def draw(s: int) -> np.ndarray:
            return rng.beta(a, b, size=(s, n, m))

        return mc_choice_probabilities(draw, n, m, _draws(self.n_mc, n_mc)), mean

    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        r = np.clip(rewards, 0.0, 1.0)  # graded stream labels count as a success
        n = self.n_arms
        self._alpha[:n] += np.bincount(rows, weights=weights * r, minlength=n)
        self._beta[:n] += np.bincount(rows, weights=weights * (1.0 - r), minlength=n)

    def _discount(self, factor: float) -> None:
        n, g = self.n_arms, factor
        self._alpha[:n] = self._a0[:n] + g * (self._alpha[:n] - self._a0[:n])
        self._beta[:n] = self._b0[:n] + g * (self._beta[:n] - self._b0[:n])

    def _stat_columns(self) -> dict[str, np.ndarray]:
        n = self.n_arms
        return {
            "alpha": self._alpha[:n],
            "beta": self._beta[:n],
            "prior_alpha": self._a0[:n],
            "prior_beta": self._b0[:n],
        }

    def _load_stat_columns(self, table: pa.Table, n: int) -> None:
        self._alpha = self._column(table, "alpha", None)
        self._beta = self._column(table, "beta", None)
        self._a0 = self._column(table, "prior_alpha", None)
        self._b0 = self._column(table, "prior_beta", None)
