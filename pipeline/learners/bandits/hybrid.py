"""Shared-parameter policies: hybrid LinUCB (Li et al., WWW 2010) and hybrid linear Thompson sampling.

The per-arm policies fit one model per arm: nothing one item teaches reaches another, and a new
item starts from the prior. These policies score (context, item) *pairs* with one model shared by
every arm, over the crossed features

    ``z(x, a) = vec(x ⊗ [1, a])``  (``k = dim · (action_dim + 1)`` slots),

where ``x`` is the context (slot 0 its bias, as :func:`~.contexts.context_vectors` builds it) and
``a`` the item's features (:func:`~.contexts.action_vectors`, or given with the request). ``z``
holds the context, the item's features and every context × item interaction, so the shared
weights ``β`` say how much a user of context x likes an item with features a, for every item. With
``per_arm`` (the default) each arm also keeps its own weights ``θ_a`` on the context, Li et al.'s
*hybrid* model ``r ≈ zᵀβ + xᵀθ_a``: the shared part generalises, the per-arm part learns what the
features do not say.

Both parts are one ridge regression (prior ``λI`` on ``β`` and every ``θ_a``), solved exactly as
in Li et al.'s Algorithm 2: with per-arm sums ``A_a = λI + Σ x xᵀ``, ``B_a = Σ x zᵀ``,
``b_a = Σ r x`` and shared sums ``Z = λI + Σ z zᵀ``, ``c = Σ r z``, the shared posterior has
precision ``A₀ = Z - Σ_a B_aᵀ A_a⁻¹ B_a`` (a Schur complement) and mean
``β = A₀⁻¹ (c - Σ_a B_aᵀ A_a⁻¹ b_a)``; given ``β``, arm a's weights have mean
``A_a⁻¹ (b_a - B_a β)`` and precision ``A_a``. With ``u = A_a⁻¹ x`` and ``g = z - B_aᵀ u`` a pair
scores

    mean ``= gᵀβ + uᵀb_a``,   variance ``= gᵀ A₀⁻¹ g + xᵀu``  (Li et al.'s ``s_{t,a}``).

An update touches the arms of the batch: their terms of the Schur sums are taken out, their sums
updated, their terms put back, and ``A₀`` (``k × k``) inverted once per batch. Discounting fades
every sum and recomputes the Schur sums over all arms (O(arms · dim · k²) per update call).

Item features of an arm: when a decision gives none for a candidate (None, or an all-zero row),
the features the arm was last learned with are used, so a logged stream whose events carry their
item's features (``item_features`` names them) also decides well for candidates it only knows by
id. An unseen item with features starts from the shared model: warm, not cold.

Examples
--------
Two items with opposite features; the shared model learns from item "a" alone that users like
its feature, and scores an unseen item "c" with the same feature high at once:

>>> policy = HybridLinUCB(dim=2, action_dim=1, alpha=0.0, per_arm=False)
>>> x = np.array([[1.0, 0.0]] * 20)
>>> policy.update(x, ["a"] * 20, np.ones(20), action_features=np.ones((20, 1)))
>>> policy.update(x, ["b"] * 20, np.zeros(20), action_features=-np.ones((20, 1)))
>>> chosen, p = policy.select(x[:1], ["b", "c"], action_features=np.array([[-1.0], [1.0]]))
>>> chosen.tolist(), p.tolist()
([[1]], [[1.0]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.errors import SnapshotError
from pipeline.features import FeatureBatch
from pipeline.learners.bandits.arms import grow_rows
from pipeline.learners.bandits.base import DEFAULT_DIM, DEFAULT_DRIFT_DELTA, BanditPolicy
from pipeline.learners.bandits.contexts import action_vectors, context_vectors
from pipeline.learners.bandits.kernels import (
    from_column,
    greedy_distribution,
    row_chunks,
    tie_propensities,
    to_list_column,
    top_k,
)
from pipeline.learners.bandits.thompson import _draws, mc_choice_probabilities, mc_propensities
from pipeline.learners.checks import integer, number

__all__ = ["DEFAULT_ACTION_DIM", "HybridLinUCB", "HybridLinear", "HybridThompson"]

#: item-feature slots when none are configured
DEFAULT_ACTION_DIM = 8

#: the shared model's statistics, one row of list columns in the ``shared`` state table
_SHARED = ("Z", "c", "C", "cb", "A0_inv", "beta")


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + np.swapaxes(a, -1, -2))


class HybridLinear(BanditPolicy):
    """The hybrid ridge statistics and scoring shared by :class:`HybridLinUCB` and :class:`HybridThompson`.

    Parameters
    ----------
    dim
        Context dimension (slot 0 is the bias in contexts built from features).
    action_dim
        Item-feature dimension.
    item_features
        Names of the event features that describe the item (price, cuisine, ...): :meth:`learn`
        and serving take them out of the context and into the item's features.
    per_arm
        Keep per-arm weights on the context beside the shared ones (Li et al.'s hybrid model);
        False: the shared model alone (then an arm is nothing but its features).
    lam
        Ridge prior (> 0) of the shared and the per-arm weights.
    gamma, seed, exclude_features, include_user, importance_weighting, max_weight, gauge_window,
    embedding_checkpoint, embedding_parts,
    reset_on_drift, drift_delta, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`.
    """

    uses_action_features = True

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        action_dim: int = DEFAULT_ACTION_DIM,
        item_features: Sequence[str] = (),
        per_arm: bool = True,
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
        self.action_dim = integer("action_dim", action_dim, 1)
        if isinstance(item_features, str):
            item_features = (item_features,)
        self.item_features = tuple(item_features)
        self.per_arm = bool(per_arm)
        self.lam = number("lam", lam, 0.0, low_open=True)
        self._k = k = self.dim * (self.action_dim + 1)
        self._d = d = self.dim if self.per_arm else 0
        self._Z = self.lam * np.eye(k)
        self._c = np.zeros(k)
        self._C = np.zeros((k, k))
        self._cb = np.zeros(k)
        self._A0_inv = np.eye(k) / self.lam
        self._beta = np.zeros(k)
        self._chol: np.ndarray | None = None
        self._A = np.zeros((0, d, d))
        self._A_inv = np.zeros((0, d, d))
        self._B = np.zeros((0, d, k))
        self._b = np.zeros((0, d))
        self._act = np.zeros((0, self.action_dim))

    # -- inputs -------------------------------------------------------------------------------------
    def batch_contexts(self, batch: FeatureBatch) -> np.ndarray:
        """Contexts without the item's features (they go to :meth:`batch_action_features`)."""
        exclude = (*self.exclude_features, *self.item_features)
        if self._embeddings is not None:
            return self._embeddings.contexts(batch, self.dim, exclude, self.include_user)
        return context_vectors(batch, self.dim, exclude, self.include_user)

    def batch_action_features(self, batch: FeatureBatch) -> np.ndarray:
        return action_vectors(batch, self.action_dim, self.item_features)

    def _attach_actions(self, X: np.ndarray, action_features, rows: np.ndarray) -> np.ndarray:
        """``[n, m, dim + action_dim]``: each row's context beside each candidate's item features.

        An all-zero feature row stands for "not given" and takes the arm's remembered features.
        """
        if action_features is None:
            return X
        n, m = X.shape[0], rows.shape[-1]
        A = np.asarray(action_features, dtype=np.float64)
        if A.ndim == 2 and A.shape == (m, self.action_dim):
            A = np.broadcast_to(A, (n, m, self.action_dim))
        elif A.shape != (n, m, self.action_dim):
            raise ValueError(
                f"action_features must have shape [m={m}, action_dim={self.action_dim}] or "
                f"[n={n}, m={m}, action_dim={self.action_dim}], got {A.shape}"
            )
        if not np.isfinite(A).all():
            raise ValueError("action_features must be finite")
        missing = ~A.any(axis=-1)
        if missing.any():
            stored = np.broadcast_to(self._act[rows], A.shape)
            A = np.where(missing[..., None], stored, A)
        x = np.broadcast_to(X[:, None, :], (n, m, self.dim))
        return np.concatenate([x, A], axis=-1)

    def _split(self, X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(contexts [n, dim], item features [n, m, action_dim])`` of hook inputs."""
        if X.ndim == 3:
            return X[:, 0, : self.dim], X[:, :, self.dim :]
        if X.shape[1] > self.dim:  # one event per row, its features attached (_event_inputs)
            return X[:, : self.dim], X[:, None, self.dim :]
        n, m = X.shape[0], rows.shape[-1]
        return X, np.broadcast_to(self._act[rows], (n, m, self.action_dim))

    def _cross(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``z = vec(x ⊗ [1, a])``: ``[n, dim]`` with ``[n, m, action_dim]`` to ``[n, m, k]``."""
        n, m = a.shape[:2]
        ab = np.concatenate([np.ones((n, m, 1)), a], axis=-1)
        return (x[:, None, :, None] * ab[:, :, None, :]).reshape(n, m, self._k)

    def _row_cost(self, m: int, rows_ndim: int) -> int:
        d, k = self._d, self._k
        return m * (3 * k + (d * k + d * d if rows_ndim == 2 else 2 * d) + self.dim)

    # -- scoring ------------------------------------------------------------------------------------
    def _terms(self, X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``g = z - B_aᵀu`` ``[n, m, k]``, ``uᵀb_a`` and ``xᵀu`` ``[n, m]`` (see the module docstring)."""
        x, a = self._split(X, rows)
        z = self._cross(x, a)
        n, m = z.shape[:2]
        if not self.per_arm:
            return z, np.zeros((n, m)), np.zeros((n, m))
        if rows.ndim == 1:
            u = np.einsum("mde,ne->nmd", self._A_inv[rows], x)
            g = z - np.einsum("mdk,nmd->nmk", self._B[rows], u)
            c = np.einsum("nmd,md->nm", u, self._b[rows])
        else:
            u = np.einsum("nmde,ne->nmd", self._A_inv[rows], x)
            g = z - np.einsum("nmdk,nmd->nmk", self._B[rows], u)
            c = np.einsum("nmd,nmd->nm", u, self._b[rows])
        return g, c, np.einsum("nmd,nd->nm", u, x)

    def _mean_var(self, X: np.ndarray, rows: np.ndarray, need_var: bool = True):
        g, c, q = self._terms(X, rows)
        mean = g @ self._beta + c
        if not need_var:
            return mean, None
        return mean, np.einsum("nmk,nmk->nm", g @ self._A0_inv, g) + q

    # -- learning -----------------------------------------------------------------------------------
    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        x = X[:, : self.dim]
        if X.shape[1] > self.dim:
            a = X[:, self.dim :]  # each event's own features, even when an arm repeats in the batch
            self._act[rows] = a  # the arm's latest features, for decisions without any
        else:
            a = self._act[rows]
        z = self._cross(x, a[:, None, :])[:, 0]
        wr = weights * rewards
        self._Z += (z * weights[:, None]).T @ z
        self._c += wr @ z
        if self.per_arm:
            touched = np.unique(rows)
            old_C, old_cb = self._schur_terms(touched)
            xw = x * weights[:, None]
            np.add.at(self._A, rows, xw[:, :, None] * x[:, None, :])
            np.add.at(self._B, rows, xw[:, :, None] * z[:, None, :])
            np.add.at(self._b, rows, wr[:, None] * x)
            self._A_inv[touched] = _sym(np.linalg.inv(self._A[touched]))
            new_C, new_cb = self._schur_terms(touched)
            self._C += new_C - old_C
            self._cb += new_cb - old_cb
        self._solve()

    def _schur_terms(self, arms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Σ B_aᵀA_a⁻¹B_a, Σ B_aᵀA_a⁻¹b_a)`` over ``arms``."""
        C, cb = np.zeros((self._k, self._k)), np.zeros(self._k)
        for sl in row_chunks(len(arms), 2 * self._d * self._k):
            t = arms[sl]
            AiB = np.matmul(self._A_inv[t], self._B[t])  # [t, d, k]
            C += np.einsum("tdk,tdl->kl", self._B[t], AiB)
            cb += np.einsum("tdk,td->k", AiB, self._b[t])
        return C, cb

    def _solve(self) -> None:
        self._A0_inv = _sym(np.linalg.inv(_sym(self._Z - self._C)))
        self._beta = self._A0_inv @ (self._c - self._cb)
        self._chol = None

    def _discount(self, factor: float) -> None:
        g, lam = factor, self.lam
        self._Z = g * self._Z + (1.0 - g) * lam * np.eye(self._k)
        self._c *= g
        if self.per_arm:
            n = self.n_arms
            self._A[:n] = g * self._A[:n] + (1.0 - g) * lam * np.eye(self._d)
            self._B[:n] *= g
            self._b[:n] *= g
            for sl in row_chunks(n, self._d * self._d):
                self._A_inv[sl] = _sym(np.linalg.inv(self._A[sl]))
            self._C, self._cb = self._schur_terms(np.arange(n))
        # _update_stats follows and solves for the shared posterior

    def _grow(self, n_old: int, n_new: int) -> None:
        d = self._d
        self._A = grow_rows(self._A, n_old, n_new, self.lam * np.eye(d))
        self._A_inv = grow_rows(self._A_inv, n_old, n_new, np.eye(d) / self.lam)
        self._B = grow_rows(self._B, n_old, n_new, 0.0)
        self._b = grow_rows(self._b, n_old, n_new, 0.0)
        self._act = grow_rows(self._act, n_old, n_new, 0.0)

    # -- state --------------------------------------------------------------------------------------
    def _stat_columns(self) -> dict[str, np.ndarray]:
        n, d, k = self.n_arms, self._d, self._k
        cols = {"act": self._act[:n]}
        if self.per_arm:
            cols.update(
                A=self._A[:n].reshape(n, d * d),
                A_inv=self._A_inv[:n].reshape(n, d * d),
                B=self._B[:n].reshape(n, d * k),
                b=self._b[:n],
            )
        return cols

    def _load_stat_columns(self, table: pa.Table, n: int) -> None:
        d, k = self._d, self._k
        self._act = self._column(table, "act", self.action_dim)
        if self.per_arm:
            self._A = self._column(table, "A", d * d).reshape(n, d, d)
            self._A_inv = self._column(table, "A_inv", d * d).reshape(n, d, d)
            self._B = self._column(table, "B", d * k).reshape(n, d, k)
            self._b = self._column(table, "b", d)
        else:
            self._A, self._A_inv = np.zeros((n, 0, 0)), np.zeros((n, 0, 0))
            self._B, self._b = np.zeros((n, 0, k)), np.zeros((n, 0))

    def _shared_tables(self) -> dict[str, pa.Table]:
        arrays = {name: getattr(self, "_" + name) for name in _SHARED}
        return {"shared": pa.table({name: to_list_column(v.reshape(1, -1)) for name, v in arrays.items()})}

    def _load_shared_tables(self, tables: dict[str, pa.Table]) -> None:
        if "shared" not in tables:
            raise SnapshotError("state has no 'shared' table (the shared model's statistics)")
        table, k = tables["shared"], self._k
        if table.num_rows != 1:
            raise SnapshotError(f"shared table must have 1 row, got {table.num_rows}")
        for name in _SHARED:
            if name not in table.column_names:
                raise SnapshotError(f"shared table lacks column {name!r}")
            square = name in ("Z", "C", "A0_inv")
            flat = from_column(table.column(name), k * k if square else k, name)[0]
            setattr(self, "_" + name, flat.reshape(k, k) if square else flat)
        self._chol = None


class HybridLinUCB(HybridLinear):
    """Hybrid LinUCB (Li et al., 2010, Algorithm 2): top-k of ``mean + α·sqrt(variance)`` over pairs.

    Deterministic; tied scores in a random order with the policy's generator (1/t each).

    Parameters
    ----------
    alpha
        Width of the confidence bound (>= 0); the default 0.5 as in :class:`~pipeline.learners.bandits.linucb.LinUCB`.
    dim, action_dim, item_features, per_arm, lam, gamma, seed, exclude_features, include_user,
    importance_weighting, max_weight, gauge_window, embedding_checkpoint, embedding_parts,
    reset_on_drift, drift_delta, name
        See :class:`HybridLinear`.
    """

    kind = "hybrid_linucb"

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        action_dim: int = DEFAULT_ACTION_DIM,
        alpha: float = 0.5,
        item_features: Sequence[str] = (),
        per_arm: bool = True,
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
            action_dim=action_dim,
            item_features=item_features,
            per_arm=per_arm,
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
        mean, var = self._mean_var(X, rows, need_var=self.alpha > 0)
        if self.alpha == 0:
            return mean, mean
        return mean + self.alpha * np.sqrt(np.maximum(var, 0.0)), mean

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        score = self._scores(X, rows)[0]
        chosen = top_k(score, k, self._rng)
        return chosen, tie_propensities(score, chosen)

    def _distribution(self, X, rows, rng, n_mc):
        score, mean = self._scores(X, rows)
        return greedy_distribution(score), mean


class HybridThompson(HybridLinear):
    """Thompson sampling from the hybrid model's posterior ``N(β, v²A₀⁻¹)``, then ``N(θ_a | β, v²A_a⁻¹)``.

    One shared draw ``β̃`` per decision (the same for all its candidates), then each candidate's
    per-arm term given ``β̃``: its sampled score is ``gᵀβ̃ + uᵀb_a + v·sqrt(xᵀu)·ε``, an exact draw
    of ``zᵀβ̃ + xᵀθ̃_a`` from the joint posterior, at ``O(k)`` per candidate after one ``k × k``
    Cholesky factor per update.

    Propensities are estimated by Monte Carlo as for :class:`~.thompson.LinearThompson` (``n_mc``
    draws, ``(1 + hits) / (1 + n_mc)``: bias at most ``1 / (1 + n_mc)``, standard error about
    ``sqrt(p (1 - p) / n_mc)``); each further draw costs one ``k``-vector per decision and one
    number per candidate.

    Parameters
    ----------
    v
        Posterior scale (exploration), > 0; the default 0.3 as in :class:`~pipeline.learners.bandits.thompson.LinearThompson`.
    n_mc
        Monte-Carlo draws per decision for the propensity (0: NaN propensities, no cost).
    dim, action_dim, item_features, per_arm, lam, gamma, seed, exclude_features, include_user,
    importance_weighting, max_weight, gauge_window, embedding_checkpoint, embedding_parts,
    reset_on_drift, drift_delta, name
        See :class:`HybridLinear`.
    """

    kind = "hybrid_ts"

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        action_dim: int = DEFAULT_ACTION_DIM,
        v: float = 0.3,
        n_mc: int = 32,
        item_features: Sequence[str] = (),
        per_arm: bool = True,
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
            action_dim=action_dim,
            item_features=item_features,
            per_arm=per_arm,
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
        self.v = number("v", v, 0.0, low_open=True)
        self.n_mc = integer("n_mc", n_mc, 0)

    def _factor(self) -> np.ndarray:
        """A square root ``L`` of ``A₀⁻¹`` (``L Lᵀ = A₀⁻¹``), cached until the next update."""
        if self._chol is None:
            try:
                self._chol = np.linalg.cholesky(self._A0_inv)
            except np.linalg.LinAlgError:  # round-off left it barely indefinite
                w, V = np.linalg.eigh(self._A0_inv)
                self._chol = V * np.sqrt(np.maximum(w, 0.0))
        return self._chol

    def _sampler(self, X: np.ndarray, rows: np.ndarray, rng: np.random.Generator):
        g, c, q = self._terms(X, rows)
        n, m = c.shape
        mean = g @ self._beta + c
        L, sd = self._factor(), self.v * np.sqrt(np.maximum(q, 0.0))
        # gᵀ(β + vLε) = mean + v (gL)ᵀε: project once, draw in k dimensions per decision
        gL = self.v * (g @ L)

        def draw(s: int) -> np.ndarray:
            eps = rng.standard_normal((s, n, self._k))
            out = mean + np.einsum("nmk,snk->snm", gL, eps)
            if self.per_arm:
                out += sd * rng.standard_normal((s, n, m))
            return out

        return draw, mean

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        draw, _ = self._sampler(X, rows, self._rng)
        chosen = top_k(draw(1)[0], k)
        return chosen, mc_propensities(draw, chosen, self.n_mc, rows.shape[-1])

    def _distribution(self, X, rows, rng, n_mc):
        draw, mean = self._sampler(X, rows, rng)
        n, m = mean.shape
        return mc_choice_probabilities(draw, n, m, _draws(self.n_mc, n_mc)), mean
