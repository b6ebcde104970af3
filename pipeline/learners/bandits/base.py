"""What every bandit policy shares: contexts from features, the arm table, the two APIs, state.

A policy has two entry points:

* the pure-array API for closed loops and benchmarks, ``select(contexts, candidates, k)`` and
  ``update(contexts, arms, rewards, weights)``;
* the :class:`~pipeline.learners.base.Learner` API over a :class:`~pipeline.features.FeatureBatch`,
  where the event's item is the action and its label the reward: ``predict`` is the estimated
  reward of the event's (context, item), ``learn`` updates from it.

Subclasses fill in a few hooks (template methods): ``_grow`` (prior statistics for new arms),
``_mean_var`` (estimated reward and its variance term for (context, arm) pairs), ``_decide``
(choose a slate for a chunk of contexts), ``_distribution`` (the top-1 choice as probabilities
over the candidates, for off-policy evaluation), ``_update_stats``, ``_discount`` and the state
columns.

Every policy reports gauges (:meth:`BanditPolicy.gauges`): its number of arms, the reward rate
of the last ``gauge_window`` learned events and a running SNIPS estimate of its own value from
the logged propensities (:mod:`.monitor`).

Non-stationarity is handled by discounting per event: with ``gamma < 1`` the sufficient
statistics of every arm move towards the prior by ``gamma`` for every event learned, exactly as if
events came one at a time (a batch of B fades the old statistics by ``gamma**B`` and weights its
i-th event by ``gamma**(B - 1 - i)``), so the memory is about ``1 / (1 - gamma)`` events whatever
the batch size. Discounting rather than a sliding window keeps the statistics O(arms) and the
update a sum.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.drift.detectors import LossDriftTracker
from pipeline.drift.settings import DriftSettings
from pipeline.errors import SnapshotError
from pipeline.features import FeatureBatch
from pipeline.learners.bandits import persist
from pipeline.learners.bandits.arms import ArmTable, grow_rows
from pipeline.learners.bandits.contexts import context_vectors
from pipeline.learners.bandits.embeddings import FrozenEmbeddings, check_parts
from pipeline.learners.bandits.kernels import from_column, row_chunks
from pipeline.learners.bandits.monitor import PolicyMonitor
from pipeline.learners.base import Policy, StateBundle
from pipeline.learners.checks import example_weights, integer, number
from pipeline.ope import SNIPS

__all__ = ["DEFAULT_DIM", "DEFAULT_DRIFT_DELTA", "BanditPolicy", "context_vectors"]

#: mixed into the seed of the generators that evaluation uses, so that it never draws from the
#: policy's own decision stream
_EVAL_SALT = 0x5EED_0BE

#: context width when none is configured: enough hashed slots for a handful of features
DEFAULT_DIM = 16

#: ADWIN's confidence parameter for a policy's own drift watch (``reset_on_drift``): on obp's
#: simulator it raised no alarm in 180,000 stationary rounds and found every abrupt drift
#: (benchmarks/bandits_peers.py); river's default 0.002 raised one early false alarm there
DEFAULT_DRIFT_DELTA = 0.0005
#: events the drift watch ignores at first (the learning curve), and after an alarm
_DRIFT_WARMUP = 1000
_DRIFT_COOLDOWN = 1000


class _OnFirstUse:
    """A generator made when first drawn from: the deterministic policies never draw, and seeding
    one costs more than their whole decision."""

    __slots__ = ("_make", "_rng")

    def __init__(self, make: Callable[[], np.random.Generator]):
        self._make, self._rng = make, None

    def __getattr__(self, name: str):
        if self._rng is None:
            self._rng = self._make()
        return getattr(self._rng, name)


class BanditPolicy(Policy):
    """Base of the bandit policies: arm table, validation, chunking, Learner API and state.

    Parameters (shared by every policy)
    ----------
    dim
        Context dimension.
    gamma
        Discount in (0, 1] per learned event, independent of the batch size (1 = no forgetting;
        memory about ``1 / (1 - gamma)`` events).
    seed
        Seed of the policy's random generator (decisions are deterministic given the seed and the
        sequence of calls; the generator's state is part of the snapshot).
    exclude_features, include_user
        How :meth:`predict` / :meth:`learn` build contexts (see :func:`context_vectors`).
    embedding_checkpoint, embedding_parts
        Hybrid offline + online contexts (:mod:`.embeddings`): with the path of a ``streamlearn
        pretrain`` checkpoint, the last ``len(embedding_parts) x`` the ranker's ``dim`` slots of
        every context are the frozen ranker's embeddings (``"user"``, ``"item"``,
        ``"user_x_item"``, each scaled to unit RMS norm) and the features fill the first ones;
        ``dim`` must leave at least 2 slots for them. See "Embedding contexts" below.
    importance_weighting
        In :meth:`learn`, weight each event by ``1 / propensity`` of the logging policy (events
        without a propensity get weight 1), clipped at ``max_weight``.
    gauge_window
        Events over which :meth:`gauges` reports the reward rate and the running SNIPS estimate
        (0 turns the estimate off, and with it its cost in :meth:`learn`).
    reset_on_drift, drift_delta
        Watch the policy's own prequential error and forget on a change (see "Drift" below):
        ADWIN with confidence ``drift_delta`` on the excess logloss of the estimated reward of
        every learned event, before it is learned. On an alarm every arm's statistics go back to
        the prior (the arms stay known) and the policy explores afresh. For rewards in [0, 1].

    Drift
    -----
    Discounting (``gamma``) trades accuracy in a stationary world for speed after a change, and
    needs the change's time scale. The drift watch (on by default) costs nothing in accuracy
    until a change is detected: as in Adapt-EvE (Hartland et al., 2006), a change detector on the
    policy's own errors restarts it. The watch is the drift monitor's
    (:class:`~pipeline.drift.detectors.LossDriftTracker`: ADWIN on the excess logloss against an
    exponentially weighted base rate, so that a change of the reward rate alone, which the policy
    follows anyway, raises no alarm); it skips the first 1,000 events and the 1,000 after an alarm.
    Its state is part of the snapshot, and :meth:`gauges` counts the resets.

    Embedding contexts
    ------------------
    The checkpoint is read once (``weights_only``), the ranker is frozen, and only the path, the
    parts and the file's SHA-256 go into snapshots: the file must stay available (at that path or
    another given on restart), and a snapshot restored with other parts or another checkpoint file
    is refused, since the learned statistics live in that embedding space.

    The policies here fit one model per arm (LinUCB, Diag-LinUCB, linear Thompson sampling,
    ε-greedy). For such disjoint models the item's own embedding is the same for every event of an
    arm, so ``"item"`` only adds a per-arm bias; ``"user"`` (the default) is the useful part: arm
    a learns ``θ_a · e_user``, a per-item direction in the offline user space. ``"user_x_item"``
    (``diag(v_a) e_user`` for arm a) spans the same functions per arm but reshapes the ridge prior:
    coordinates where the item's embedding is large are shrunk less, so an arm learns first along
    the directions the offline model uses for that item (``θ_a = 1`` is the offline ``u · v``
    term). Item-dependent parts
    describe the event's own item: they suit :meth:`predict` / :meth:`learn`, but :meth:`select`
    and :meth:`distribution` score every candidate with one context per request, so decisions
    (and the gauges' value estimate) should use ``"user"`` only. The array API is unchanged:
    callers pass their own contexts (:func:`~.embeddings.hybrid_contexts` builds them).
    Context-free policies (Beta Thompson sampling) take no context and no checkpoint.
    """

    kind = "bandit"
    #: False for context-free policies (Beta-Bernoulli): contexts only give the number of rows
    uses_context = True
    #: True for shared-parameter policies that score (context, item features) pairs
    #: (:mod:`.hybrid`); the per-arm policies take no ``action_features``
    uses_action_features = False
    #: with the delayed-feedback join a policy learns an exposure's final reward only, never a
    #: provisional 0 (pipeline/runner.py; docs/delayed_feedback.md)
    learns_final_labels = True

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
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
        super().__init__(name)
        self.dim = integer("dim", dim, 1)
        self.gamma = number("gamma", gamma, 0.0, 1.0, low_open=True)
        self.seed = seed
        self.exclude_features = tuple(exclude_features)
        self.include_user = bool(include_user)
        self.importance_weighting = bool(importance_weighting)
        self.max_weight = number("max_weight", max_weight, 0.0, low_open=True)
        self.gauge_window = integer("gauge_window", gauge_window, 0)
        self.reset_on_drift = bool(reset_on_drift)
        self.drift_delta = number("drift_delta", drift_delta, 0.0, 1.0, low_open=True)
        self._drift = self._new_drift_watch() if self.reset_on_drift else None
        self._resets = 0
        self.embedding_parts = check_parts(embedding_parts)
        self.embedding_checkpoint = None if embedding_checkpoint is None else str(embedding_checkpoint)
        self._embeddings: FrozenEmbeddings | None = None
        if self.embedding_checkpoint is not None:
            if not self.uses_context:
                raise ValueError(
                    f"embedding_checkpoint needs a contextual policy; {type(self).__name__} has none"
                )
            self._embeddings = FrozenEmbeddings.load(self.embedding_checkpoint, self.embedding_parts)
            width = self._embeddings.width
            if self.dim - width < 2:
                raise ValueError(
                    f"dim={self.dim} leaves {self.dim - width} context slots for features next to "
                    f"embedding_parts={list(self.embedding_parts)} of width {width} (ranker dim "
                    f"{self._embeddings.ranker.spec.dim} each); dim must be >= {width + 2}"
                )
        self._monitor = PolicyMonitor(max(self.gauge_window, 1))
        self._rng = np.random.default_rng(seed)
        self._arms = ArmTable()
        self._n_stats = 0
        self._spare_row = False
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
    def _distribution(
        self, X: np.ndarray, rows: np.ndarray, rng: np.random.Generator, n_mc: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [n, m] of each candidate being the top-1 choice, estimated rewards [n, m])``.

        Sampling policies estimate the probabilities with ``n_mc`` draws from ``rng`` (``None``:
        their own ``n_mc``, or 100 where that is 0).
        """

    @abc.abstractmethod
    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        """Absorb one batch of (context, arm, reward, weight)."""

    @abc.abstractmethod
    def _discount(self, factor: float) -> None:
        """Move every arm's statistics towards the prior by ``factor`` (``gamma`` per event)."""

    @abc.abstractmethod
    def _stat_columns(self) -> dict[str, np.ndarray]:
        """Per-arm statistics (rows ``:n_arms``), 1-D or 2-D float arrays, for the ``arms`` table."""

    @abc.abstractmethod
    def _load_stat_columns(self, table: pa.Table, n: int) -> None:
        """Restore the statistics written by :meth:`_stat_columns`."""

    def _shared_tables(self) -> dict[str, pa.Table]:
        """Statistics that belong to no arm (a shared model's), as extra state tables."""
        return {}

    def _load_shared_tables(self, tables: dict[str, pa.Table]) -> None:
        """Restore what :meth:`_shared_tables` wrote."""

    # -- arms -----------------------------------------------------------------------------------------
    @property
    def n_arms(self) -> int:
        return len(self._arms)

    @property
    def arm_ids(self) -> list[str]:
        return list(self._arms.ids)

    def _sync_arms(self) -> None:
        """Give new arms their prior statistics, and keep one row more at the prior: the *spare
        row*, which read-only scoring gives every arm it has not seen (row ``n_arms``)."""
        n = len(self._arms)
        if n > self._n_stats or not self._spare_row:
            self._grow(self._n_stats, n + 1)
            self._pulls = grow_rows(self._pulls, self._n_stats, n + 1, 0)
            self._reward_sum = grow_rows(self._reward_sum, self._n_stats, n + 1, 0.0)
            self._n_stats = n
            self._spare_row = True

    def _rows(self, arms, name: str) -> np.ndarray:
        """Rows of ``arms``, adding unseen ones (learning)."""
        rows = self._arms.resolve(arms, name)
        self._sync_arms()
        return rows

    def _known_rows(self, arms, name: str) -> np.ndarray:
        """Rows of ``arms`` without adding any: an unseen arm is scored on the spare prior row."""
        return self._or_spare(self._arms.lookup(arms, name))

    def _or_spare(self, rows: np.ndarray) -> np.ndarray:
        self._sync_arms()  # at most allocates the spare row: learned state is untouched
        return np.where(rows < 0, self._n_stats, rows)

    def _batch_rows(self, batch: FeatureBatch) -> np.ndarray:
        col = batch.events.column("item_id")
        rows = self._arms.resolve_hashes(batch.item_hash, lambda pos: col.take(pa.array(pos)).to_pylist())
        self._sync_arms()
        return rows

    # -- validation -------------------------------------------------------------------------------------
    def _check_contexts(self, contexts, n: int | None = None) -> np.ndarray:
        if contexts is None:  # a policy that ignores context may be given none
            if self.uses_context:
                raise ValueError(f"{self.kind} needs contexts of shape [n, dim={self.dim}], got None")
            return np.zeros((1 if n is None else n, 0))
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
        self, contexts: np.ndarray, candidates: np.ndarray, k: int = 1, action_features=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Choose ``k`` of the candidate arms for every context.

        Parameters
        ----------
        contexts
            ``[n, dim]`` floats (context-free policies only use ``n``).
        candidates
            Arm ids (str, or int written in decimal: ``7`` is arm ``"7"``): ``[m]`` shared by
            every context or ``[n, m]``.
            Unseen arms are scored with the prior statistics; they join the arm table when
            :meth:`update` first learns from them.
        k
            Slate size, ``1 <= k <= m``.
        action_features
            Shared-parameter policies only (``uses_action_features``): the candidates' item
            features, ``[m, action_dim]`` or ``[n, m, action_dim]``; None (or an all-zero row)
            uses the features each known arm was last learned with. Per-arm policies refuse them.

        Returns
        -------
        chosen, propensities
            ``chosen[i, j]`` is the position in the candidates of the item put at slot j for
            context i; ``propensities[i, j]`` is the probability that the policy puts that item at
            slot j (the marginal over its randomness; 1.0 for deterministic policies).
        """
        X = self._decision_contexts(contexts, candidates)
        n = X.shape[0]
        rows = self._candidate_rows(candidates, n)
        m = rows.shape[-1]
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= max(m, 1)) or m == 0:
            raise ValueError(f"k must be an integer in [1, m={m}] and candidates non-empty, got k={k!r}")
        X = self._attach_actions(X, action_features, rows)
        chosen = np.empty((n, k), np.int64)
        props = np.empty((n, k))
        for sl in row_chunks(n, self._row_cost(m, rows.ndim)):
            chosen[sl], props[sl] = self._decide(X[sl], rows if rows.ndim == 1 else rows[sl], int(k))
        return chosen, props

    def _row_cost(self, m: int, rows_ndim: int) -> int:
        """Floats one decision row costs: the chunking budget of :meth:`select` and :meth:`distribution`.

        Shared candidates: score matrices dominate; per-row candidates: gathered statistics do.
        """
        return m * (self.dim if rows_ndim == 2 else 4)

    def _attach_actions(self, X: np.ndarray, action_features, rows: np.ndarray) -> np.ndarray:
        """Contexts with the candidates' item features attached, as the hooks take them.

        Per-arm policies have one model per arm and no use for item features: they refuse them.
        Shared-parameter policies (:mod:`.hybrid`) override this.
        """
        if action_features is not None:
            raise ValueError(
                f"{self.kind} fits one model per arm and takes no action_features; the "
                "shared-parameter policies (hybrid_linucb, hybrid_ts) learn from item features"
            )
        return X

    def batch_action_features(self, batch: FeatureBatch) -> np.ndarray | None:
        """``[n, action_dim]`` item features of a batch's events (None: the policy uses none)."""
        return None

    def choose(self, contexts, candidates, k: int = 1, action_features=None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`select`, answered with the chosen candidates themselves instead of positions.

        Returns ``(items [n, k], propensities [n, k])``: ``items[i, j]`` is the candidate (its id
        as passed) put at slot j for context i.

        >>> from pipeline.learners.bandits import BetaThompson
        >>> items, p = BetaThompson(seed=0, n_mc=0).choose(None, ["a", "b", "c"], k=2)
        >>> items.shape, set(items[0].tolist()) <= {"a", "b", "c"}
        ((1, 2), True)
        """
        chosen, props = self.select(contexts, candidates, k, action_features)
        cand = np.asarray(candidates)
        if cand.ndim == 1:
            return cand[chosen], props
        return np.take_along_axis(cand, chosen, axis=1), props

    def _decision_contexts(self, contexts, candidates) -> np.ndarray:
        """The checked contexts of a decision; None stands for one decision, or one per row of
        2-D candidates."""
        cand = np.shape(candidates) if contexts is None else ()
        return self._check_contexts(contexts, cand[0] if len(cand) == 2 else None)

    def _candidate_rows(self, candidates, n: int) -> np.ndarray:
        cand = np.asarray(candidates)
        if cand.ndim not in (1, 2) or (cand.ndim == 2 and cand.shape[0] != n):
            raise ValueError(f"candidates must have shape [m] or [n={n}, m], got {cand.shape}")
        return self._known_rows(cand, "candidates")

    def distribution(
        self,
        contexts: np.ndarray,
        candidates: np.ndarray,
        rng: np.random.Generator | None = None,
        n_mc: int | None = None,
        action_features=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-1 decision as a distribution over the candidates, with the reward estimates.

        This is the target policy of off-policy evaluation: ``probs[i, j]`` is the probability
        that :meth:`select` with ``k=1`` picks candidate j for context i — 1 on the choice of a
        deterministic policy (LinUCB, Diag-LinUCB; 1/t on each of t tied best arms), exact for
        ε-greedy, a Monte-Carlo estimate (``hits / n_mc``) for Thompson sampling. Nothing is
        learned and the policy's own generator is not used, so evaluating changes no decision.

        Parameters
        ----------
        contexts, candidates
            As in :meth:`select` (unseen candidates are scored with the prior statistics).
        rng
            Generator for Thompson sampling's draws (default: one seeded from ``seed`` and the
            number of updates so far, so the result is reproducible).
        n_mc
            Draws per context for Thompson sampling (default: the policy's ``n_mc``, or 100 if 0).
        action_features
            As in :meth:`select`.

        Returns
        -------
        probs, means
            ``[n, m]`` each: rows of ``probs`` sum to 1; ``means`` are the estimated rewards
            (unclipped, as :meth:`predict_arrays`), the reward model of doubly robust estimates.
        """
        X = self._decision_contexts(contexts, candidates)
        return self._distribution_of_rows(
            X, self._candidate_rows(candidates, X.shape[0]), rng, n_mc, action_features
        )

    def distribution_of_hashes(
        self,
        contexts: np.ndarray,
        candidate_hashes: np.ndarray,
        rng: np.random.Generator | None = None,
        n_mc: int | None = None,
        action_features=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`distribution` of candidates given by their item-id hashes (``[m]`` or ``[n, m]``, as
        :attr:`~pipeline.features.FeatureBatch.item_hash` holds them) instead of their ids: for a
        caller that has featurized them already (serving), so that no id is hashed twice.

        >>> from pipeline.hashing import hash_strings
        >>> from pipeline.learners.bandits import DiagLinUCB
        >>> policy = DiagLinUCB(dim=2)
        >>> x, ids = np.ones((1, 2)), ["a", "b"]
        >>> p, m = policy.distribution_of_hashes(x, hash_strings(ids, "item_id"))
        >>> bool((p == policy.distribution(x, ids)[0]).all())
        True
        """
        X = self._check_contexts(contexts)
        hashes = np.asarray(candidate_hashes, np.uint64)
        if hashes.ndim not in (1, 2) or (hashes.ndim == 2 and hashes.shape[0] != X.shape[0]):
            raise ValueError(
                f"candidate_hashes must have shape [m] or [n={X.shape[0]}, m], got {hashes.shape}"
            )
        return self._distribution_of_rows(
            X, self._or_spare(self._arms.find(hashes)), rng, n_mc, action_features
        )

    def _distribution_of_rows(self, X, rows, rng, n_mc, action_features) -> tuple[np.ndarray, np.ndarray]:
        n, m = X.shape[0], rows.shape[-1]
        if m == 0:
            raise ValueError("candidates must be non-empty")
        if n_mc is not None and not (isinstance(n_mc, (int, np.integer)) and n_mc >= 1):
            raise ValueError(f"n_mc must be an integer >= 1 or None, got {n_mc!r}")
        rng = rng if rng is not None else _OnFirstUse(self._eval_rng)
        X = self._attach_actions(X, action_features, rows)
        probs, means = np.empty((n, m)), np.empty((n, m))
        for sl in row_chunks(n, self._row_cost(m, rows.ndim)):
            probs[sl], means[sl] = self._distribution(X[sl], rows if rows.ndim == 1 else rows[sl], rng, n_mc)
        return probs, means

    def _new_drift_watch(self) -> LossDriftTracker:
        settings = DriftSettings(
            detector="adwin",
            detector_params={"delta": self.drift_delta},
            warmup_events=_DRIFT_WARMUP,
            cooldown_events=_DRIFT_COOLDOWN,
        )
        return LossDriftTracker(settings)

    def _eval_rng(self) -> np.random.Generator:
        return np.random.default_rng([_EVAL_SALT, int(self.seed or 0) % (1 << 63), self._updates])

    def update(self, contexts, arms, rewards, weights=None, action_features=None) -> None:
        """Learn from ``n`` (context, arm, reward) triples, optionally importance-weighted.

        ``arms`` are ids (str, or int written in decimal); ``weights`` (>= 0) default to 1;
        ``action_features`` ``[n, action_dim]`` the arms' item features (shared-parameter
        policies only; None: the features each arm was last learned with).
        """
        arms = np.asarray(arms)
        if arms.ndim != 1:
            raise ValueError(f"arms must be 1-D, got shape {arms.shape}")
        n = len(arms)
        X = self._check_contexts(contexts, n)
        r = self._check_vector(rewards, n, "rewards")
        w = np.ones(n) if weights is None else self._check_vector(weights, n, "weights", low=0.0)
        rows = self._rows(arms, "arms")
        self._apply(self._event_inputs(X, action_features, rows), rows, r, w)

    def _event_inputs(self, X: np.ndarray, action_features, rows: np.ndarray) -> np.ndarray:
        """The inputs of one event per row (its own arm): :meth:`_attach_actions` on ``[n, 1]``."""
        if action_features is None and not self.uses_action_features:
            return X
        a = None if action_features is None else np.asarray(action_features, np.float64)[:, None]
        P = self._attach_actions(X, a, rows[:, None])
        return P[:, 0] if P.ndim == 3 else P

    def predict_arrays(self, contexts, arms, action_features=None) -> np.ndarray:
        """Estimated reward of each (context, arm) pair (not clipped); ``arms`` as in :meth:`update`.

        Unseen arms get the prior's estimate and are not added (scoring changes no state)."""
        arms = np.asarray(arms)
        if arms.ndim != 1:
            raise ValueError(f"arms must be 1-D, got shape {arms.shape}")
        X = self._check_contexts(contexts, len(arms))
        if not len(arms):
            return np.zeros(0)
        rows = self._known_rows(arms, "arms")
        X = self._event_inputs(X, action_features, rows)
        return self._mean_var(X, rows[:, None], need_var=False)[0][:, 0]

    def _apply(self, X: np.ndarray, rows: np.ndarray, r: np.ndarray, w: np.ndarray) -> None:
        if not len(rows):
            return
        if self._drift is not None:
            # prequential: each event's estimate before it is learned
            mean = self._mean_var(X, rows[:, None], need_var=False)[0][:, 0]
            if self._drift.update(self._drift.seen, np.clip(mean, 0.0, 1.0), r):
                self._discount(0.0)  # what was learned before the change: back to the prior
                self._resets += 1
        if self.gamma < 1.0:
            # per event, whatever the batch size: as if the batch's events came one at a time,
            # the old statistics fade by gamma**B and event i of B counts gamma**(B - 1 - i)
            size = len(rows)
            self._discount(self.gamma**size)
            w = w * self.gamma ** np.arange(size - 1, -1, -1, dtype=np.float64)
        self._update_stats(X, rows, r, w)
        n = self.n_arms
        self._pulls[:n] += np.bincount(rows, minlength=n)
        self._reward_sum[:n] += np.bincount(rows, weights=r, minlength=n)
        self._updates += 1
        if self.gauge_window:
            self._monitor.add_rewards(r)

    # -- Learner API ---------------------------------------------------------------------------------------
    def batch_contexts(self, batch: FeatureBatch) -> np.ndarray:
        """The ``[n, dim]`` contexts this policy builds from a batch (``[n, 0]`` if it ignores context):
        :func:`context_vectors`, or with ``embedding_checkpoint`` :func:`~.embeddings.hybrid_contexts`."""
        if not self.uses_context:
            return np.zeros((len(batch), 0))
        if self._embeddings is not None:
            return self._embeddings.contexts(batch, self.dim, self.exclude_features, self.include_user)
        return context_vectors(batch, self.dim, self.exclude_features, self.include_user)

    def embedding_meta(self) -> dict[str, Any] | None:
        """What a snapshot records of the embedding contexts (None without a checkpoint)."""
        if self._embeddings is None:
            return None
        e = self._embeddings
        return {"checkpoint": self.embedding_checkpoint, "parts": list(e.parts), "sha256": e.sha256}

    def predict(self, batch: FeatureBatch) -> np.ndarray:
        """Estimated reward of each event's (context, item), clipped to [0, 1]; changes no state.

        Items never seen before are scored with the prior statistics; :meth:`learn` adds them to
        the arm table.
        """
        if not len(batch):
            return np.zeros(0)
        rows = self._or_spare(self._arms.find(batch.item_hash))
        X = self._event_inputs(self.batch_contexts(batch), self.batch_action_features(batch), rows)
        mean, _ = self._mean_var(X, rows[:, None], need_var=False)
        return np.clip(mean[:, 0], 0.0, 1.0)

    def learn(self, batch: FeatureBatch, predictions: np.ndarray | None = None) -> None:
        """Update with item = action and label = reward (``predictions`` are not needed).

        The batch's example weights (``FeatureBatch.weights``) multiply each event's weight in the
        sufficient statistics, after the importance weights and their ``max_weight`` clip: weight 0
        adds nothing to them, integer k adds the event k times. As with :meth:`update`'s
        ``weights``, the rest counts events as they come, unweighted: ``pulls`` and
        ``reward_sum``, the gauges, the drift watch and the ``gamma`` discount (per event).
        """
        if not len(batch):
            return
        example = example_weights(batch)
        rows = self._batch_rows(batch)
        r = np.asarray(batch.labels, dtype=np.float64)
        w = np.ones(len(batch))
        if self.importance_weighting:
            p = batch.events.propensity
            w = np.where(np.isfinite(p) & (p > 0), 1.0 / np.where(p > 0, p, 1.0), 1.0)
            w = np.minimum(w, self.max_weight)
        if example is not None:
            w = w * example
        X = self.batch_contexts(batch)
        if self.gauge_window:
            self._monitor.evaluate(self, batch, X, rows)  # before learning: prequential
        self._apply(self._event_inputs(X, self.batch_action_features(batch), rows), rows, r, w)

    # -- gauges ---------------------------------------------------------------------------------------------
    def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        """Prometheus gauges: known arms, the reward rate and the SNIPS value over ``gauge_window`` events.

        The reward rate is the mean reward of the last ``gauge_window`` learned events; the
        value estimate is SNIPS (:mod:`pipeline.ope`) of this policy's top-1 choice against the
        logged propensities over the same events, each evaluated before it was learned
        (prequential; :meth:`.monitor.PolicyMonitor.evaluate` says which events and candidates). Gauges whose window is
        still empty are left out.
        """
        out = [("streamlearn_bandit_arms", {"policy": self.name}, float(self.n_arms))]
        if self._drift is not None:
            out.append(("streamlearn_bandit_drift_resets_total", {"policy": self.name}, float(self._resets)))
        if not self.gauge_window:
            return out
        rate, value = self._monitor.reward_rate(), self._monitor.value()
        if math.isfinite(rate):
            labels = {"policy": self.name, "window": str(self.gauge_window)}
            out.append(("streamlearn_bandit_reward_rate", labels, rate))
        if math.isfinite(value):
            labels = {"policy": self.name, "estimator": SNIPS.name}
            out.append(("streamlearn_policy_value_estimate", labels, value))
        return out

    # -- state ------------------------------------------------------------------------------------------------
    def state(self) -> StateBundle:
        """Tables ``arms`` (one row per arm: arm_id, pulls, reward_sum, statistics) and the gauges'
        windows (``recent_rewards``, ``recent_rounds``), and ``meta`` (see :mod:`.persist`)."""
        return persist.state_bundle(self)

    def load_state(self, bundle: StateBundle) -> None:
        persist.load_bundle(self, bundle)

    def _column(self, table: pa.Table, name: str, width: int | None) -> np.ndarray:
        if name not in table.column_names:
            raise SnapshotError(f"arms table lacks column {name!r}")
        return from_column(table.column(name), width, name)
