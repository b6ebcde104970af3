"""Diag-LinUCB ("Online Matching", YouTube, arXiv 2307.15893): LinUCB with diagonal statistics.

Every (arm, context dimension) pair keeps two numbers, ``d`` (initialised to λ) and ``b``,
updated by ``d += w·x²`` and ``b += w·x·r``, and the plain paper's version scores
``Σ_j x_j b_j / d_j + α·sqrt(Σ_j x_j² / d_j)``. Updates are plain sums, so they are
order-independent and the statistics of several workers merge by adding what each learned
(:meth:`DiagLinUCB.merged`). Scoring is a few matrix products and updating a few ``bincount``\\ s:
no per-arm matrices, so it scales to many arms and large ``dim``.

Why centring (``centered``, the default): per-coordinate statistics equal ridge regression only
for centred, uncorrelated contexts. An arm's contexts are those it was chosen for, which a
bandit's own choices make non-centred (a context coordinate's mean under selection is not 0), and
then ``b_j = Σ x_j r`` mostly measures the mean reward times ``Σ x_j``: on obp's simulator the
plain version's regret is 5x LinUCB's. Centred, each arm also keeps ``n = Σ w``, ``s_x = Σ w·x``
and ``s_r = Σ w·r`` (sums again: still mergeable) and fits an intercept and per-coordinate slopes
on the centred data, ``r̄ + Σ_j (x_j - x̄_j) b'_j / d'_j`` with ``d' = d - s_x²/n``,
``b' = b - x̄·s_r``, and the variance ``1/(λ + n) + Σ_j (x_j - x̄_j)² / d'_j``. This reaches
99% of LinUCB's reward there (benchmarks/bandits_peers.py); what remains is the correlation
between coordinates that selection induces, which only a full matrix captures.

Examples
--------
>>> policy = DiagLinUCB(dim=2, alpha=0.0, lam=1.0, centered=False)
>>> policy.update(np.array([[1.0, 2.0]]), np.array(["a"]), np.array([1.0]))
>>> policy.state().tables["arms"].select(["arm_id", "d", "b"]).to_pylist()
[{'arm_id': 'a', 'd': [2.0, 5.0], 'b': [1.0, 2.0]}]
>>> float(policy.predict_arrays(np.array([[1.0, 2.0]]), ["a"])[0])  # 1/2 + 2*2/5
1.3
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.errors import SnapshotError
from pipeline.learners.bandits.arms import grow_rows
from pipeline.learners.bandits.base import DEFAULT_DIM, DEFAULT_DRIFT_DELTA, BanditPolicy
from pipeline.learners.bandits.kernels import greedy_distribution, tie_propensities, top_k
from pipeline.learners.checks import number

__all__ = ["DiagLinUCB"]


def _embedding_space(policy: BanditPolicy) -> tuple | None:
    """The context space's identity: embedding parts and checkpoint digest (the path may differ)."""
    meta = policy.embedding_meta()
    return None if meta is None else (tuple(meta["parts"]), meta["sha256"])


class DiagLinUCB(BanditPolicy):
    """Diagonal LinUCB; deterministic top-k (propensity 1), tied scores in a random order (1/t each).

    Parameters
    ----------
    dim
        Context dimension.
    alpha
        Width of the confidence bound (>= 0); the default 0.5 as in :class:`~pipeline.learners.bandits.linucb.LinUCB`.
    lam
        Initial value of every ``d`` (> 0), the diagonal ridge prior (of the intercept too).
    centered
        Fit each arm on its centred contexts with an intercept (see the module's "Why centring");
        False: the paper's uncentred statistics.
    embedding_checkpoint, embedding_parts
        Hybrid contexts with a pretrained ranker's embeddings (None: features only); see
        :class:`~pipeline.learners.bandits.base.BanditPolicy`, "Embedding contexts".
    gamma, seed, exclude_features, include_user, importance_weighting, max_weight, gauge_window, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`. Discounting moves ``d``
        towards λ and ``b`` towards 0; merging discounted workers is then only approximate.
    """

    kind = "diag_linucb"

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        alpha: float = 0.5,
        lam: float = 1.0,
        centered: bool = True,
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
        self.lam = number("lam", lam, 0.0, low_open=True)
        self.centered = bool(centered)
        self._d = np.zeros((0, self.dim))
        self._b = np.zeros((0, self.dim))
        self._n = np.zeros(0)  # centring sums: Σw, Σw·x, Σw·r
        self._sx = np.zeros((0, self.dim))
        self._sr = np.zeros(0)
        # derived by the same elementwise formulas everywhere (bitwise reproducible): the mean is
        # X·ratio + offset, the variance (X*X)·inv_d - 2 X·cross + prior
        self._inv_d = np.zeros((0, self.dim))
        self._ratio = np.zeros((0, self.dim))
        self._offset = np.zeros(0)
        self._cross = np.zeros((0, self.dim))
        self._prior = np.zeros(0)

    def _grow(self, n_old: int, n_new: int) -> None:
        self._d = grow_rows(self._d, n_old, n_new, self.lam)
        self._b = grow_rows(self._b, n_old, n_new, 0.0)
        self._n = grow_rows(self._n, n_old, n_new, 0.0)
        self._sx = grow_rows(self._sx, n_old, n_new, 0.0)
        self._sr = grow_rows(self._sr, n_old, n_new, 0.0)
        self._inv_d = grow_rows(self._inv_d, n_old, n_new, 0.0)
        self._ratio = grow_rows(self._ratio, n_old, n_new, 0.0)
        self._offset = grow_rows(self._offset, n_old, n_new, 0.0)
        self._cross = grow_rows(self._cross, n_old, n_new, 0.0)
        self._prior = grow_rows(self._prior, n_old, n_new, 0.0)
        self._refresh(slice(n_old, n_new))

    def _refresh(self, rows) -> None:
        if not self.centered:
            self._inv_d[rows] = 1.0 / self._d[rows]
            self._ratio[rows] = self._b[rows] * self._inv_d[rows]
            return
        n = self._n[rows]
        seen = (n > 0)[:, None]
        xbar = np.where(seen, self._sx[rows] / np.where(seen, n[:, None], 1.0), 0.0)
        rbar = np.where(n > 0, self._sr[rows] / np.where(n > 0, n, 1.0), 0.0)
        # d - s_x²/n >= λ in exact arithmetic (Cauchy-Schwarz); the floor only absorbs rounding
        inv_d = 1.0 / np.maximum(self._d[rows] - self._sx[rows] * xbar, self.lam)
        ratio = (self._b[rows] - xbar * self._sr[rows][:, None]) * inv_d
        self._inv_d[rows], self._ratio[rows] = inv_d, ratio
        self._offset[rows] = rbar - (xbar * ratio).sum(axis=1)
        self._cross[rows] = xbar * inv_d
        self._prior[rows] = 1.0 / (self.lam + n) + (xbar * xbar * inv_d).sum(axis=1)

    # -- scoring --------------------------------------------------------------------------------------
    def _mean_var(self, X: np.ndarray, rows: np.ndarray, need_var: bool = True):
        if rows.ndim == 1:
            if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
                rows = slice(int(rows[0]), int(rows[-1]) + 1)  # a view instead of a gather
            mean = X @ self._ratio[rows].T
            if self.centered:
                mean += self._offset[rows]
            if not need_var:
                return mean, None
            var = (X * X) @ self._inv_d[rows].T
            if self.centered:
                var += self._prior[rows] - 2.0 * (X @ self._cross[rows].T)
            return mean, np.maximum(var, 0.0)
        mean = np.einsum("nd,nmd->nm", X, self._ratio[rows])
        if self.centered:
            mean += self._offset[rows]
        if not need_var:
            return mean, None
        var = np.einsum("nd,nmd->nm", X * X, self._inv_d[rows])
        if self.centered:
            var += self._prior[rows] - 2.0 * np.einsum("nd,nmd->nm", X, self._cross[rows])
        return mean, np.maximum(var, 0.0)

    def _scores(self, X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(upper confidence bounds, means)``, both ``[n, m]``."""
        mean, var = self._mean_var(X, rows, need_var=self.alpha > 0)
        return (mean + self.alpha * np.sqrt(var) if self.alpha > 0 else mean), mean

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        score = self._scores(X, rows)[0]
        chosen = top_k(score, k, self._rng)  # ties in a random order: cold arms share the decisions
        return chosen, tie_propensities(score, chosen)

    def _distribution(self, X, rows, rng, n_mc):
        score, mean = self._scores(X, rows)
        return greedy_distribution(score), mean

    # -- learning ---------------------------------------------------------------------------------------
    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        uniq, inv = np.unique(rows, return_inverse=True)
        u, d = len(uniq), self.dim
        flat = (inv[:, None] * d + np.arange(d)).ravel()
        wx = X * weights[:, None]
        self._d[uniq] += np.bincount(flat, weights=(wx * X).ravel(), minlength=u * d).reshape(u, d)
        self._b[uniq] += np.bincount(flat, weights=(wx * rewards[:, None]).ravel(), minlength=u * d).reshape(
            u, d
        )
        if self.centered:
            self._n[uniq] += np.bincount(inv, weights=weights, minlength=u)
            self._sx[uniq] += np.bincount(flat, weights=wx.ravel(), minlength=u * d).reshape(u, d)
            self._sr[uniq] += np.bincount(inv, weights=weights * rewards, minlength=u)
        self._refresh(uniq)

    def _discount(self, factor: float) -> None:
        n, g = self.n_arms, factor
        self._d[:n] = self.lam + g * (self._d[:n] - self.lam)
        self._b[:n] *= g
        self._n[:n] *= g
        self._sx[:n] *= g
        self._sr[:n] *= g
        self._refresh(slice(0, n))

    # -- merging ------------------------------------------------------------------------------------------
    @classmethod
    def merged(cls, workers: Sequence[DiagLinUCB], base: DiagLinUCB | None = None) -> DiagLinUCB:
        """One policy holding what all ``workers`` learned.

        Each worker is assumed to have started from ``base`` (default: the prior, an untrained
        policy) and learned from its own share of the stream; the result is ``base`` plus the sum
        of every worker's difference from ``base``: exactly (up to float rounding) the policy that
        would have learned the union of the shares, since the statistics are sums. Arms are united
        by id. The result takes the first worker's configuration and a fresh random generator.
        """
        if not workers:
            raise ValueError("workers must name at least one DiagLinUCB policy")
        first = workers[0]
        for i, w in enumerate(workers):
            if not isinstance(w, cls) or (w.dim, w.lam, w.centered) != (first.dim, first.lam, first.centered):
                raise ValueError(
                    f"workers[{i}] must be a {cls.__name__} with dim={first.dim}, lam={first.lam} "
                    f"and centered={first.centered}"
                )
            if _embedding_space(w) != _embedding_space(first):
                raise ValueError(f"workers[{i}] has other embedding contexts than workers[0]")
        out = first.clone()
        if base is not None:
            if (base.dim, base.lam, base.centered) != (first.dim, first.lam, first.centered):
                raise ValueError(
                    f"base must have dim={first.dim}, lam={first.lam} and centered={first.centered}"
                )
            if _embedding_space(base) != _embedding_space(first):
                raise ValueError("base has other embedding contexts than the workers")
            out.load_state(base.state())
        for w in workers:
            out._absorb(w, base)
        return out

    def _absorb(self, other: DiagLinUCB, base: DiagLinUCB | None) -> None:
        n = other.n_arms
        hashes, ids = other._arms.hashes, other._arms.ids
        rows = self._arms.resolve_hashes(hashes, lambda pos: [ids[p] for p in pos])
        self._sync_arms()
        d0, b0 = np.full((n, self.dim), self.lam), np.zeros((n, self.dim))
        n0, sx0, sr0 = np.zeros(n), np.zeros((n, self.dim)), np.zeros(n)
        pulls0, rsum0 = np.zeros(n, np.int64), np.zeros(n)
        if base is not None:
            in_base = base._arms.find(hashes)
            hit = in_base >= 0
            d0[hit], b0[hit] = base._d[in_base[hit]], base._b[in_base[hit]]
            n0[hit], sx0[hit], sr0[hit] = (
                base._n[in_base[hit]],
                base._sx[in_base[hit]],
                base._sr[in_base[hit]],
            )
            pulls0[hit], rsum0[hit] = base._pulls[in_base[hit]], base._reward_sum[in_base[hit]]
        # rows are distinct within one worker, so fancy-index += is safe
        self._d[rows] += other._d[:n] - d0
        self._b[rows] += other._b[:n] - b0
        self._n[rows] += other._n[:n] - n0
        self._sx[rows] += other._sx[:n] - sx0
        self._sr[rows] += other._sr[:n] - sr0
        self._pulls[rows] += other._pulls[:n] - pulls0
        self._reward_sum[rows] += other._reward_sum[:n] - rsum0
        self._refresh(rows)
        self._updates += other._updates - (base._updates if base is not None else 0)

    # -- state --------------------------------------------------------------------------------------------
    def _stat_columns(self) -> dict[str, np.ndarray]:
        n = self.n_arms
        out = {"d": self._d[:n], "b": self._b[:n]}
        if self.centered:
            out.update(n=self._n[:n], sx=self._sx[:n], sr=self._sr[:n])
        return out

    def _load_stat_columns(self, table: pa.Table, n: int) -> None:
        self._d = self._column(table, "d", self.dim)
        self._b = self._column(table, "b", self.dim)
        if self.centered:
            if "n" not in table.column_names:
                raise SnapshotError(
                    "diag_linucb state has no centring sums (columns n, sx, sr): it was saved with "
                    "centered=false (or before centring existed); configure centered=false to load it"
                )
            self._n = self._column(table, "n", None)
            self._sx = self._column(table, "sx", self.dim)
            self._sr = self._column(table, "sr", None)
        else:
            self._n, self._sx, self._sr = (
                np.zeros(len(self._d)),
                np.zeros_like(self._d),
                np.zeros(len(self._d)),
            )
        for name in ("_inv_d", "_ratio", "_cross"):
            setattr(self, name, np.zeros_like(self._d))
        self._offset, self._prior = np.zeros(len(self._d)), np.zeros(len(self._d))
        self._refresh(slice(0, n))
