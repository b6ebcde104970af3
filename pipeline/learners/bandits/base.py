"""What every bandit policy shares: contexts from features, the arm table, the two APIs, state.

A policy has two entry points:

* the pure-array API for closed loops and benchmarks, ``select(contexts, candidates, k)`` and
  ``update(contexts, arms, rewards, weights)``;
* the :class:`~pipeline.learners.base.Learner` API over a :class:`~pipeline.features.FeatureBatch`,
  where the event's item is the action and its label the reward: ``predict`` is the estimated
  reward of the event's (context, item), ``learn`` updates from it.

Subclasses fill in a few hooks (template methods): ``_grow`` (prior statistics for new arms),
``_mean_var`` (estimated reward and its variance term for (context, arm) pairs), ``_decide``
(choose a slate for a chunk of contexts), ``_update_stats``, ``_discount`` and the state columns.

Non-stationarity is handled by discounting: with ``gamma < 1`` every update call first moves the
sufficient statistics of every arm towards the prior by a factor ``gamma`` (so with batches of B
events the memory is about ``B / (1 - gamma)`` events). Discounting rather than a sliding window
keeps the statistics O(arms) and the update a sum.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import SnapshotError
from pipeline.features import BIAS_KEY, FeatureBatch
from pipeline.hashing import combine, fmix64, hash_one, hash_strings
from pipeline.learners.bandits.arms import ArmTable, grow_rows
from pipeline.learners.bandits.kernels import from_column, row_chunks, to_list_column
from pipeline.learners.base import Policy, StateBundle

__all__ = ["BanditPolicy", "context_vectors"]

_CONTEXT_SALT = np.uint64(hash_one("context", namespace="bandit"))


def context_vectors(
    batch: FeatureBatch, dim: int, exclude: Sequence[str] = (), include_user: bool = False
) -> np.ndarray:
    """Dense contexts ``[n, dim]`` from a batch's hashed features.

    Slot 0 is the bias (1.0). Every other feature of the row (categorical ``name=value`` with value
    1, numeric features with their standardised value, configured crosses) is folded into slots
    ``1..dim-1`` by its hashed key, with a hashed sign so that collisions cancel on average
    (feature hashing, Weinberger et al. 2009). The item's own id is left out: the arm is the item.
    Features that describe the item rather than the context (price, cuisine) should be named in
    ``exclude``; crosses that involve ``item_id`` cannot be told apart and should not be configured.

    Parameters
    ----------
    batch
        The featurised micro-batch (not modified).
    dim
        Context dimension, >= 2.
    exclude
        Feature names (categorical or numeric) to leave out.
    include_user
        Fold the user-id hash in as well (one random ±1 slot per user; useful only with many slots).

    Examples
    --------
    >>> from pipeline.events import decode_json, EventRules
    >>> from pipeline.features import Featurizer, FeatureSpec
    >>> events, _ = decode_json([b'{"event_id":"e","ts":1,"user_id":"u","item_id":"i","label":1,'
    ...                          b'"features":{"device":"ios"}}'], EventRules())
    >>> x = context_vectors(Featurizer(FeatureSpec()).transform(events), dim=8)
    >>> x.shape, float(x[0, 0]), float(np.abs(x[0, 1:]).sum())
    ((1, 8), 1.0, 1.0)
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2 to build contexts from features, got {dim}")
    n = len(batch)
    out = np.zeros((n, dim))
    out[:, 0] = 1.0
    rows = batch.row_of_nnz
    keys = batch.keys
    drop = (keys == BIAS_KEY) | (keys == batch.item_hash[rows])
    if not include_user:
        drop |= keys == batch.user_hash[rows]
    if len(exclude):
        drop |= np.isin(keys, _feature_keys(batch, exclude))
    keep = ~drop
    h = fmix64(keys[keep] ^ _CONTEXT_SALT)
    slot = 1 + (h % np.uint64(dim - 1)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
    flat = rows[keep] * dim + slot
    out += np.bincount(flat, weights=sign * batch.values[keep], minlength=n * dim).reshape(n, dim)
    return out


def _feature_keys(batch: FeatureBatch, names: Sequence[str]) -> np.ndarray:
    """The featurizer's keys of the named features in this batch (see pipeline.features)."""
    names_arr = pa.array(list(names), pa.string())
    cat = batch.events.column("cat_features")
    sel = pc.is_in(cat.keys, value_set=names_arr)
    cat_keys = combine(
        hash_strings(cat.keys.filter(sel), "feature"), hash_strings(cat.items.filter(sel), "value")
    )
    num_keys = np.array([hash_one(name, "numeric") for name in names], dtype=np.uint64)
    return np.concatenate([cat_keys, num_keys])


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class BanditPolicy(Policy):
    """Base of the bandit policies: arm table, validation, chunking, Learner API and state.

    Parameters (shared by every policy)
    ----------
    dim
        Context dimension.
    gamma
        Discount in (0, 1] applied once per update call (1 = no forgetting).
    seed
        Seed of the policy's random generator (decisions are deterministic given the seed and the
        sequence of calls; the generator's state is part of the snapshot).
    exclude_features, include_user
        How :meth:`predict` / :meth:`learn` build contexts (see :func:`context_vectors`).
    importance_weighting
        In :meth:`learn`, weight each event by ``1 / propensity`` of the logging policy (events
        without a propensity get weight 1), clipped at ``max_weight``.
    """

    kind = "bandit"
    #: False for context-free policies (Beta-Bernoulli): contexts only give the number of rows
    uses_context = True

    def __init__(
        self,
        dim: int,
        gamma: float = 1.0,
        seed: int = 0,
        exclude_features: Sequence[str] = (),
        include_user: bool = False,
        importance_weighting: bool = False,
        max_weight: float = 100.0,
        name: str | None = None,
    ):
        super().__init__(name)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self.dim = int(dim)
        self.gamma = float(gamma)
        self.seed = seed
        self.exclude_features = tuple(exclude_features)
        self.include_user = bool(include_user)
        self.importance_weighting = bool(importance_weighting)
        self.max_weight = _positive("max_weight", max_weight)
        self._rng = np.random.default_rng(seed)
        self._arms = ArmTable()
        self._n_stats = 0
        self._pulls = np.zeros(0, np.int64)
        self._reward_sum = np.zeros(0)
        self._updates = 0

    # -- hooks --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _grow(self, n_old: int, n_new: int) -> None:
        """Give arms ``n_old..n_new-1`` their prior statistics."""

    @abc.abstractmethod
    def _mean_var(self, X: np.ndarray, rows: np.ndarray, need_var: bool = True) -> tuple[np.ndarray, Any]:
        """Estimated reward and variance term ``[n, m]`` for contexts ``X`` and arm ``rows`` ([m] or [n, m])."""

    @abc.abstractmethod
    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(chosen [n, k] positions into the candidates, propensities [n, k])`` for a chunk."""

    @abc.abstractmethod
    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        """Absorb one batch of (context, arm, reward, weight)."""

    @abc.abstractmethod
    def _discount(self) -> None:
        """Move every arm's statistics towards the prior by ``gamma``."""

    @abc.abstractmethod
    def _stat_columns(self) -> dict[str, np.ndarray]:
        """Per-arm statistics (rows ``:n_arms``), 1-D or 2-D float arrays, for the ``arms`` table."""

    @abc.abstractmethod
    def _load_stat_columns(self, table: pa.Table, n: int) -> None:
        """Restore the statistics written by :meth:`_stat_columns`."""

    # -- arms -----------------------------------------------------------------------------------------
    @property
    def n_arms(self) -> int:
        return len(self._arms)

    @property
    def arm_ids(self) -> list[str]:
        return list(self._arms.ids)

    def _sync_arms(self) -> None:
        n = len(self._arms)
        if n > self._n_stats:
            self._grow(self._n_stats, n)
            self._pulls = grow_rows(self._pulls, self._n_stats, n, 0)
            self._reward_sum = grow_rows(self._reward_sum, self._n_stats, n, 0.0)
            self._n_stats = n

    def _rows(self, arms, name: str) -> np.ndarray:
        rows = self._arms.resolve(arms, name)
        self._sync_arms()
        return rows

    def _batch_rows(self, batch: FeatureBatch) -> np.ndarray:
        col = batch.events.column("item_id")
        rows = self._arms.resolve_hashes(batch.item_hash, lambda pos: col.take(pa.array(pos)).to_pylist())
        self._sync_arms()
        return rows

    # -- validation -------------------------------------------------------------------------------------
    def _check_contexts(self, contexts, n: int | None = None) -> np.ndarray:
        if contexts is None and not self.uses_context and n is not None:
            return np.zeros((n, 0))
        X = np.asarray(contexts, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"contexts must be a 2-D array [n, dim], got shape {X.shape}")
        if self.uses_context and X.shape[1] != self.dim:
            raise ValueError(f"contexts must have dim={self.dim} columns, got {X.shape[1]}")
        if n is not None and X.shape[0] != n:
            raise ValueError(f"contexts must have {n} rows (one per entry of arms), got {X.shape[0]}")
        if self.uses_context and not np.isfinite(X).all():
            raise ValueError("contexts must be finite")
        return X

    @staticmethod
    def _check_vector(values, n: int, name: str, low: float | None = None) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"{name} must be finite")
        if low is not None and v.size and v.min() < low:
            raise ValueError(f"{name} must be >= {low}, got {v.min()}")
        return v

    # -- array API ---------------------------------------------------------------------------------------
    def select(
        self, contexts: np.ndarray, candidates: np.ndarray, k: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Choose ``k`` of the candidate arms for every context.

        Parameters
        ----------
        contexts
            ``[n, dim]`` floats (context-free policies only use ``n``).
        candidates
            Arm ids (str) or integer arm rows: ``[m]`` shared by every context or ``[n, m]``.
            Unseen arms are added with their prior statistics.
        k
            Slate size, ``1 <= k <= m``.

        Returns
        -------
        chosen, propensities
            ``chosen[i, j]`` is the position in the candidates of the item put at slot j for
            context i; ``propensities[i, j]`` is the probability that the policy puts that item at
            slot j (the marginal over its randomness; 1.0 for deterministic policies).
        """
        X = self._check_contexts(contexts)
        n = X.shape[0]
        cand = np.asarray(candidates)
        if cand.ndim not in (1, 2) or (cand.ndim == 2 and cand.shape[0] != n):
            raise ValueError(f"candidates must have shape [m] or [n={n}, m], got {cand.shape}")
        rows = self._rows(cand, "candidates")
        m = rows.shape[-1]
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= max(m, 1)) or m == 0:
            raise ValueError(f"k must be an integer in [1, m={m}] and candidates non-empty, got k={k!r}")
        chosen = np.empty((n, k), np.int64)
        props = np.empty((n, k))
        # shared candidates: score matrices dominate; per-row candidates: gathered statistics do
        for sl in row_chunks(n, m * (self.dim if rows.ndim == 2 else 4)):
            chosen[sl], props[sl] = self._decide(X[sl], rows if rows.ndim == 1 else rows[sl], int(k))
        return chosen, props

    def update(self, contexts, arms, rewards, weights=None) -> None:
        """Learn from ``n`` (context, arm, reward) triples, optionally importance-weighted.

        ``arms`` are ids (str) or integer rows; ``weights`` (>= 0) default to 1.
        """
        arms = np.asarray(arms)
        if arms.ndim != 1:
            raise ValueError(f"arms must be 1-D, got shape {arms.shape}")
        n = len(arms)
        X = self._check_contexts(contexts, n)
        r = self._check_vector(rewards, n, "rewards")
        w = np.ones(n) if weights is None else self._check_vector(weights, n, "weights", low=0.0)
        self._apply(X, self._rows(arms, "arms"), r, w)

    def predict_arrays(self, contexts, arms) -> np.ndarray:
        """Estimated reward of each (context, arm) pair (not clipped); ``arms`` as in :meth:`update`."""
        arms = np.asarray(arms)
        if arms.ndim != 1:
            raise ValueError(f"arms must be 1-D, got shape {arms.shape}")
        X = self._check_contexts(contexts, len(arms))
        if not len(arms):
            return np.zeros(0)
        return self._mean_var(X, self._rows(arms, "arms")[:, None], need_var=False)[0][:, 0]

    def _apply(self, X: np.ndarray, rows: np.ndarray, r: np.ndarray, w: np.ndarray) -> None:
        if not len(rows):
            return
        if self.gamma < 1.0:
            self._discount()
        self._update_stats(X, rows, r, w)
        n = self.n_arms
        self._pulls[:n] += np.bincount(rows, minlength=n)
        self._reward_sum[:n] += np.bincount(rows, weights=r, minlength=n)
        self._updates += 1

    # -- Learner API ---------------------------------------------------------------------------------------
    def _batch_contexts(self, batch: FeatureBatch) -> np.ndarray:
        if not self.uses_context:
            return np.zeros((len(batch), 0))
        return context_vectors(batch, self.dim, self.exclude_features, self.include_user)

    def predict(self, batch: FeatureBatch) -> np.ndarray:
        """Estimated reward of each event's (context, item), clipped to [0, 1].

        Items never seen before are added to the arm table with their prior statistics (so the
        snapshot lists them); this changes no other arm and no later decision.
        """
        if not len(batch):
            return np.zeros(0)
        rows = self._batch_rows(batch)
        mean, _ = self._mean_var(self._batch_contexts(batch), rows[:, None], need_var=False)
        return np.clip(mean[:, 0], 0.0, 1.0)

    def learn(self, batch: FeatureBatch, predictions: np.ndarray | None = None) -> None:
        """Update with item = action and label = reward (``predictions`` are not needed)."""
        if not len(batch):
            return
        rows = self._batch_rows(batch)
        r = np.asarray(batch.labels, dtype=np.float64)
        w = np.ones(len(batch))
        if self.importance_weighting:
            p = batch.events.propensity
            w = np.where(np.isfinite(p) & (p > 0), 1.0 / np.where(p > 0, p, 1.0), 1.0)
            w = np.minimum(w, self.max_weight)
        self._apply(self._batch_contexts(batch), rows, r, w)

    # -- state ------------------------------------------------------------------------------------------------
    def state(self) -> StateBundle:
        """Table ``arms`` (one row per arm: arm_id, pulls, reward_sum, statistics) and ``meta``."""
        n = self.n_arms
        cols: dict[str, pa.Array] = {
            "arm_id": pa.array(self._arms.ids, pa.string()),
            "pulls": pa.array(self._pulls[:n].copy()),
            "reward_sum": pa.array(self._reward_sum[:n].copy()),
        }
        for name, arr in self._stat_columns().items():
            cols[name] = to_list_column(arr) if arr.ndim == 2 else pa.array(arr.copy())
        rng = self._rng.bit_generator.state
        meta = {
            "class": type(self).__name__,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params().items()},
            "updates": self._updates,
            "rng": {
                "bit_generator": rng["bit_generator"],
                "state": {k: str(v) for k, v in rng["state"].items()},
            },
            "rng_extra": [int(rng["has_uint32"]), int(rng["uinteger"])],
        }
        return StateBundle(tables={"arms": pa.table(cols)}, meta=meta)

    def load_state(self, bundle: StateBundle) -> None:
        meta = bundle.meta
        if meta.get("class") != type(self).__name__:
            raise SnapshotError(
                f"state meta 'class' is {meta.get('class')!r}, expected {type(self).__name__!r}"
            )
        if int(meta.get("params", {}).get("dim", self.dim)) != self.dim:
            raise SnapshotError(
                f"state meta params 'dim' is {meta['params']['dim']}, this policy has dim={self.dim}"
            )
        if "arms" not in bundle.tables:
            raise SnapshotError("state has no 'arms' table")
        table = bundle.tables["arms"]
        for col in ("arm_id", "pulls", "reward_sum"):
            if col not in table.column_names:
                raise SnapshotError(f"arms table lacks column {col!r}")
        ids = table.column("arm_id").to_pylist()
        n = len(ids)
        self._arms = ArmTable(ids)
        self._pulls = from_column(table.column("pulls"), None, "pulls").astype(np.int64)
        self._reward_sum = from_column(table.column("reward_sum"), None, "reward_sum")
        self._load_stat_columns(table, n)
        self._n_stats = n
        self._updates = int(meta.get("updates", 0))
        rng = meta["rng"]
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = {
            "bit_generator": rng["bit_generator"],
            "state": {k: int(v) for k, v in rng["state"].items()},
            "has_uint32": meta["rng_extra"][0],
            "uinteger": meta["rng_extra"][1],
        }

    def _column(self, table: pa.Table, name: str, width: int | None) -> np.ndarray:
        if name not in table.column_names:
            raise SnapshotError(f"arms table lacks column {name!r}")
        return from_column(table.column(name), width, name)
