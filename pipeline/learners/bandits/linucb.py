"""Disjoint LinUCB (Li et al., WWW 2010) and the per-arm ridge statistics it shares.

Every arm a keeps a ridge regression of reward on context: ``A_a = λI + Σ w x xᵀ``,
``b_a = Σ w r x``, ``θ_a = A_a⁻¹ b_a``. LinUCB scores ``xᵀθ_a + α·sqrt(xᵀA_a⁻¹x)`` and shows the
top k. ``A_a⁻¹`` is kept up to date with Sherman–Morrison rank-1 updates, vectorised across arms:
the events of a batch are grouped by arm and the j-th event of every arm is applied in one step,
so the Python loop runs over the deepest group, not over events. An arm with more than ``dim``
events in one batch gets its sums added at once and its inverse recomputed (cheaper, and it resets
round-off). Discounting recomputes every inverse (O(arms·d³) per update call).

Examples
--------
>>> policy = LinUCB(dim=2, alpha=1.0, lam=1.0)
>>> policy.update(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array(["a", "a"]), np.array([1.0, 0.0]))
>>> chosen, p = policy.select(np.array([[1.0, 0.5]]), np.array(["a", "b"]), k=2)
>>> chosen.tolist(), p.tolist()
([[1, 0]], [[1.0, 1.0]])
>>> round(float(policy.predict_arrays(np.array([[1.0, 0.0]]), np.array(["a"]))[0]), 6)
0.4
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.learners.bandits.arms import grow_rows
from pipeline.learners.bandits.base import DEFAULT_DIM, DEFAULT_DRIFT_DELTA, BanditPolicy
from pipeline.learners.bandits.kernels import BUDGET, greedy_distribution, row_chunks, tie_propensities, top_k
from pipeline.learners.checks import number

__all__ = ["LinUCB", "RidgeArms"]


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + np.swapaxes(a, -1, -2))


class RidgeArms(BanditPolicy):
    """Per-arm ridge regression statistics ``A``, ``A⁻¹``, ``b`` (base of LinUCB, linear TS, ε-greedy).

    ``lam`` (> 0) is the ridge prior ``A = λI`` of a new arm; the other parameters are those of
    :class:`~pipeline.learners.bandits.base.BanditPolicy`.
    """

    def __init__(self, dim: int = DEFAULT_DIM, lam: float = 1.0, gamma: float = 1.0, seed: int = 0, **kwargs):
        super().__init__(dim, gamma=gamma, seed=seed, **kwargs)
        self.lam = number("lam", lam, 0.0, low_open=True)
        self._A = np.zeros((0, self.dim, self.dim))
        self._A_inv = np.zeros((0, self.dim, self.dim))
        self._b = np.zeros((0, self.dim))

    def _grow(self, n_old: int, n_new: int) -> None:
        eye = np.eye(self.dim)
        self._A = grow_rows(self._A, n_old, n_new, self.lam * eye)
        self._A_inv = grow_rows(self._A_inv, n_old, n_new, eye / self.lam)
        self._b = grow_rows(self._b, n_old, n_new, 0.0)

    # -- scoring ------------------------------------------------------------------------------------
    def _mean_var(self, X: np.ndarray, rows: np.ndarray, need_var: bool = True):
        if rows.ndim == 1:
            return self._mean_var_shared(X, rows, need_var)
        n, m = rows.shape
        d = self.dim
        mean = np.empty((n, m))
        var = np.empty((n, m)) if need_var else None
        for sl in row_chunks(n, m * d * d):
            Ai = self._A_inv[rows[sl]]  # [c, m, d, d]
            Xc = X[sl]
            theta = np.matmul(Ai, self._b[rows[sl]][..., None])[..., 0]
            mean[sl] = np.einsum("cmd,cd->cm", theta, Xc)
            if need_var:
                AX = np.matmul(Ai, Xc[:, None, :, None])[..., 0]
                var[sl] = np.einsum("cmd,cd->cm", AX, Xc)
        return mean, var

    def _mean_var_shared(self, X: np.ndarray, rows: np.ndarray, need_var: bool):
        n, d = X.shape
        m = len(rows)
        mean = np.empty((n, m))
        var = np.empty((n, m)) if need_var else None
        step = max(1, BUDGET // (d * d + n * d))
        for a0 in range(0, m, step):
            r = rows[a0 : a0 + step]
            Ai = self._A_inv[r]
            theta = np.matmul(Ai, self._b[r][..., None])[..., 0]
            mean[:, a0 : a0 + len(r)] = X @ theta.T
            if need_var:
                # XA[n, c, e] = Σ_d X[n, d] A⁻¹[c, d, e] as one GEMM
                XA = (X @ Ai.transpose(1, 0, 2).reshape(d, len(r) * d)).reshape(n, len(r), d)
                var[:, a0 : a0 + len(r)] = np.einsum("nce,ne->nc", XA, X)
        return mean, var

    # -- learning -------------------------------------------------------------------------------------
    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        order = np.argsort(rows, kind="stable")
        rs, Xs, ws, rws = rows[order], X[order], weights[order], rewards[order] * weights[order]
        uniq, start, counts = np.unique(rs, return_index=True, return_counts=True)
        group = np.repeat(np.arange(len(uniq)), counts)
        depth = np.arange(len(rs)) - start[group]
        heavy = counts > self.dim
        light_events = np.flatnonzero(~heavy[group])
        if len(light_events):
            by_depth = light_events[np.argsort(depth[light_events], kind="stable")]
            bounds = np.searchsorted(depth[by_depth], np.arange(int(depth[light_events].max()) + 2))
            for j in range(len(bounds) - 1):
                ev = by_depth[bounds[j] : bounds[j + 1]]  # at most one event per arm
                self._sherman_morrison(rs[ev], Xs[ev], ws[ev], rws[ev])
        heavy_groups = np.flatnonzero(heavy)
        for g in heavy_groups:
            s = slice(start[g], start[g] + counts[g])
            xw = Xs[s] * ws[s, None]
            self._A[uniq[g]] += xw.T @ Xs[s]
            self._b[uniq[g]] += rws[s] @ Xs[s]
        if len(heavy_groups):
            self._A_inv[uniq[heavy_groups]] = _sym(np.linalg.inv(self._A[uniq[heavy_groups]]))

    def _sherman_morrison(self, a: np.ndarray, x: np.ndarray, w: np.ndarray, rw: np.ndarray) -> None:
        Ai = self._A_inv[a]
        u = np.matmul(Ai, x[:, :, None])[:, :, 0]
        scale = w / (1.0 + w * np.einsum("cd,cd->c", u, x))
        self._A_inv[a] = Ai - scale[:, None, None] * (u[:, :, None] * u[:, None, :])
        self._A[a] += w[:, None, None] * (x[:, :, None] * x[:, None, :])
        self._b[a] += rw[:, None] * x

    def _discount(self, factor: float) -> None:
        n = self.n_arms
        g = factor
        self._A[:n] = g * self._A[:n] + (1.0 - g) * self.lam * np.eye(self.dim)
        self._b[:n] *= g
        for sl in row_chunks(n, self.dim * self.dim):
            self._A_inv[sl] = _sym(np.linalg.inv(self._A[sl]))

    # -- state ------------------------------------------------------------------------------------------
    def _stat_columns(self) -> dict[str, np.ndarray]:
        n, d = self.n_arms, self.dim
        return {
            "A": self._A[:n].reshape(n, d * d),
            "A_inv": self._A_inv[:n].reshape(n, d * d),
            "b": self._b[:n],
        }

    def _load_stat_columns(self, table: pa.Table, n: int) -> None:
        d = self.dim
        self._A = self._column(table, "A", d * d).reshape(n, d, d)
        self._A_inv = self._column(table, "A_inv", d * d).reshape(n, d, d)
        self._b = self._column(table, "b", d)


class LinUCB(RidgeArms):
    """Disjoint LinUCB: top-k of ``xᵀθ_a + α·sqrt(xᵀA_a⁻¹x)``; deterministic (propensity 1).

    Tied scores are ordered at random with the policy's own generator (each of t tied arms has
    propensity 1/t), so a batch of cold decisions spreads over the untried arms.

    Parameters
    ----------
    dim
        Context dimension.
    alpha
        Width of the confidence bound (>= 0). The default 0.5 is tuned for rewards in [0, 1]
        and context coordinates of about unit scale (standardised features, or the hashed
        one-hot features of this project); scale ``alpha`` with the reward range, and
        standardise raw contexts (benchmarks/bandits_peers.py measured 0.3, 0.5 and 1).
    lam
        Ridge prior of a new arm (> 0).
    embedding_checkpoint, embedding_parts
        Hybrid contexts with a pretrained ranker's embeddings (None: features only); see
        :class:`~pipeline.learners.bandits.base.BanditPolicy`, "Embedding contexts".
    gamma, seed, exclude_features, include_user, importance_weighting, max_weight, gauge_window, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`.
    """

    kind = "linucb"

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        alpha: float = 0.5,
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
        self.alpha = number("alpha", alpha, 0.0)

    def _scores(self, X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(upper confidence bounds, means)``, both ``[n, m]``."""
        mean, var = self._mean_var(X, rows, need_var=self.alpha > 0)
        score = mean + self.alpha * np.sqrt(np.maximum(var, 0.0)) if self.alpha > 0 else mean
        return score, mean

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        score = self._scores(X, rows)[0]
        chosen = top_k(score, k, self._rng)  # ties in a random order: cold arms share the decisions
        return chosen, tie_propensities(score, chosen)

    def _distribution(self, X, rows, rng, n_mc):
        score, mean = self._scores(X, rows)
        return greedy_distribution(score), mean
