"""Bootstrap exploration: online bagging with Poisson weights over a linear bandit policy.

As Vowpal Wabbit's ``--bag`` explorer (Eckles & Kaptein, 2014; Bietti, Agarwal & Langford's
bake-off, 2021), the policy keeps ``bags`` copies of a base policy (LinUCB, Diag-LinUCB, linear or
hybrid Thompson sampling, ε-greedy, hybrid LinUCB) and gives every learned event to every copy
with weight ``w · Poisson(1)``: the online approximation of training each copy on its own
bootstrap resample of the stream (Oza & Russell, 2001). The spread of the copies' estimates
then tracks the estimation error, and picking one copy at random per decision and acting greedily
on it explores where the data disagree, with no confidence width to tune. The base's own
exploration is therefore off by default (``alpha=0``, ``epsilon=0``); Thompson bases keep their
posterior draws. Every bag draws its weight from Poisson(1), bag 0 included (VW's ``--bag``
without ``--greedify``), so all copies are exchangeable.

Decisions: each row draws a bag uniformly at random (the wrapper's generator), the bag's greedy
slate is the top k of its scores (its means; with ``alpha`` given in ``base_params``, its upper
confidence bounds), ties in a random order. The propensity of the item at slot j is exact: the
mean over bags b of the probability that bag b's greedy slate puts that item at slot j (``1/t``
if it is one of t tied items there, else 0; :func:`~.kernels.tie_propensities`), and for ε-greedy
bases ``(1 - ε)`` times that plus ``ε / m``. Only Thompson bases estimate it, as their base does,
by Monte Carlo (``(1 + hits) / (1 + n_mc)`` per bag, then the mean over bags).

The bags share the wrapper's arm table (their rows agree), discounting stays per event (the
wrapper's :meth:`~.base.BanditPolicy._apply` fades every bag by ``gamma**B`` and weights the
batch), and the Poisson weights are drawn per event in stream order (``[n, bags]`` row-major per
call), so one batch of n events and n batches of one learn the same.

State: the ``arms`` table holds every bag's columns prefixed ``bag{b}.``, shared tables
(hybrid bases) are named ``bag{b}.<table>``, and ``meta["bag_rngs"]`` holds the bags' own
generators (used by Thompson bases' draws).

Examples
--------
>>> policy = BootstrapPolicy(base="linucb", bags=4, dim=2, seed=0)
>>> x = np.array([[1.0, 0.0]] * 30)
>>> policy.update(x, ["a"] * 15 + ["b"] * 15, [1.0] * 15 + [0.0] * 15)
>>> chosen, p = policy.select(x[:3], ["a", "b"])
>>> chosen[:, 0].tolist(), p[:, 0].tolist()
([0, 0, 0], [1.0, 1.0, 1.0])
>>> probs, means = policy.distribution(x[:1], ["a", "b"])
>>> probs.tolist(), bool(means[0, 0] > 0.8 and abs(means[0, 1]) < 1e-12)
([[1.0, 0.0]], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import SnapshotError
from pipeline.features import FeatureBatch
from pipeline.learners.bandits.base import DEFAULT_DIM, DEFAULT_DRIFT_DELTA, BanditPolicy
from pipeline.learners.bandits.diag_linucb import DiagLinUCB
from pipeline.learners.bandits.epsilon_greedy import EpsilonGreedy
from pipeline.learners.bandits.hybrid import HybridLinUCB, HybridThompson
from pipeline.learners.bandits.kernels import tie_propensities, top_k
from pipeline.learners.bandits.linucb import LinUCB
from pipeline.learners.bandits.thompson import LinearThompson, mc_propensities
from pipeline.learners.base import StateBundle
from pipeline.learners.checks import integer

__all__ = ["BASES", "BootstrapPolicy"]

#: the ridge-type bases a bootstrap can wrap (kind -> class); imported directly, not from
#: ``POLICIES``, which is built after this module in the package's ``__init__``
BASES: dict[str, type[BanditPolicy]] = {
    cls.kind: cls for cls in (LinUCB, DiagLinUCB, LinearThompson, EpsilonGreedy, HybridLinUCB, HybridThompson)
}

#: the wrapper's own parameters: given once to it and passed on to every bag
_OWN = (
    "dim",
    "gamma",
    "seed",
    "exclude_features",
    "include_user",
    "importance_weighting",
    "max_weight",
    "gauge_window",
    "embedding_checkpoint",
    "embedding_parts",
    "reset_on_drift",
    "drift_delta",
    "name",
)

#: exploration switched off in the bags unless base_params sets it: the bagging explores
_GREEDY_DEFAULTS = {"linucb": {"alpha": 0.0}, "diag_linucb": {"alpha": 0.0}, "hybrid_linucb": {"alpha": 0.0}}
_GREEDY_DEFAULTS["epsilon_greedy"] = {"epsilon": 0.0}

_THOMPSON = (LinearThompson, HybridThompson)


def _bag_seed(seed: int | None, b: int) -> int | None:
    """A stable seed for bag ``b``: the same for the same wrapper seed, different across bags."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed) % (1 << 63), b]).generate_state(1, np.uint64)[0])


def _rng_meta(rng: np.random.Generator) -> dict[str, Any]:
    """A generator's exact state in JSON (big integers as strings, as :mod:`.persist` writes it)."""
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": {k: str(v) for k, v in st["state"].items()},
        "extra": [int(st["has_uint32"]), int(st["uinteger"])],
    }


def _rng_from_meta(meta: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = {
        "bit_generator": meta["bit_generator"],
        "state": {k: int(v) for k, v in meta["state"].items()},
        "has_uint32": meta["extra"][0],
        "uinteger": meta["extra"][1],
    }
    return rng


class BootstrapPolicy(BanditPolicy):
    """Online bagging (Poisson(1) weights) over ``bags`` copies of a ridge-type policy; greedy per bag.

    Parameters
    ----------
    base
        Kind of the bags' policy: ``"linucb"`` (default), ``"diag_linucb"``, ``"linear_ts"``,
        ``"epsilon_greedy"``, ``"hybrid_linucb"`` or ``"hybrid_ts"``.
    base_params
        Further constructor arguments of every bag (``lam``, ``action_dim``, ``item_features``,
        ``n_mc``, ...). ``alpha`` (LinUCB kinds) and ``epsilon`` default to 0 here: the bootstrap
        is the exploration. The parameters below belong to the wrapper and are refused here.
    bags
        Number of bootstrap copies (>= 1; VW's ``--bag``).
    dim, gamma, seed, exclude_features, include_user, importance_weighting, max_weight,
    gauge_window, embedding_checkpoint, embedding_parts, reset_on_drift, drift_delta, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`; ``dim``, ``gamma``, the
        context options and the embeddings are passed on to every bag, and bag b gets its own
        seed derived from ``seed`` and b. The gauges and the drift watch are the wrapper's: it
        watches the bags' mean estimate, and an alarm resets every bag.

    Raises
    ------
    ValueError
        For an unknown base, a base without a ridge model (``beta_ts``), a nested bootstrap, or
        a wrapper parameter inside ``base_params``.
    """

    kind = "bootstrap"

    def __init__(
        self,
        base: str = "linucb",
        base_params: dict[str, Any] | None = None,
        bags: int = 5,
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
        if base not in BASES:
            why = {
                "beta_ts": "it is context-free, with no ridge model to bag",
                "bootstrap": "a bootstrap of bootstraps adds nothing",
            }.get(base, "it is not a known policy kind")
            raise ValueError(f"bootstrap cannot wrap base={base!r}: {why}; use one of {sorted(BASES)}")
        if base_params is not None and not isinstance(base_params, dict):
            raise ValueError(f"base_params must be a dict or None, got {type(base_params).__name__}")
        own = sorted(set(base_params or {}) & set(_OWN))
        if own:
            raise ValueError(
                f"base_params must not set {own}: give them to BootstrapPolicy itself, which passes "
                "them on to every bag"
            )
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
        self.base = base
        self.base_params = dict(base_params or {})
        self.bags = integer("bags", bags, 1)
        cls = BASES[base]
        params = {**_GREEDY_DEFAULTS.get(base, {}), **self.base_params}
        self._bags: list[BanditPolicy] = []
        for b in range(self.bags):
            bag = cls(
                dim=self.dim,
                gamma=self.gamma,
                seed=_bag_seed(seed, b),
                exclude_features=self.exclude_features,
                include_user=self.include_user,
                # the wrapper keeps the gauges and the drift watch (an alarm resets every bag
                # through _discount(0)); the bags only hold statistics
                gauge_window=0,
                reset_on_drift=False,
                name=f"{self.name}.bag{b}",
                **params,
            )
            # the wrapper loaded the checkpoint once: the bags build contexts from the same copy
            bag._embeddings = self._embeddings
            bag.embedding_checkpoint = self.embedding_checkpoint
            bag.embedding_parts = self.embedding_parts
            bag._arms = self._arms  # one arm table: a row means the same arm in every bag
            self._bags.append(bag)
        # an instance attribute: item features pass through exactly when the base uses them
        self.uses_action_features = self._bags[0].uses_action_features
        self._thompson = isinstance(self._bags[0], _THOMPSON)

    # -- inputs (delegated to bag 0: every bag builds the same ones) ---------------------------------
    def batch_contexts(self, batch: FeatureBatch) -> np.ndarray:
        return self._bags[0].batch_contexts(batch)

    def batch_action_features(self, batch: FeatureBatch) -> np.ndarray | None:
        return self._bags[0].batch_action_features(batch)

    def _attach_actions(self, X: np.ndarray, action_features, rows: np.ndarray) -> np.ndarray:
        return self._bags[0]._attach_actions(X, action_features, rows)

    def _row_cost(self, m: int, rows_ndim: int) -> int:
        # one bag scores at a time, but every bag's [m] scores per row are kept side by side
        return self._bags[0]._row_cost(m, rows_ndim) + (self.bags + 2) * m

    # -- arms and learning ----------------------------------------------------------------------------
    def _grow(self, n_old: int, n_new: int) -> None:
        for bag in self._bags:
            bag._grow(n_old, n_new)
            # the bags' own bookkeeping agrees, so a bag's _sync_arms never regrows (resets) rows
            bag._n_stats, bag._spare_row = n_new - 1, True

    def _discount(self, factor: float) -> None:
        for bag in self._bags:
            bag._discount(factor)

    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        # [n, bags] in row-major order: the draws follow the events, so the weights do not depend
        # on how the stream is cut into batches
        poisson = self._rng.poisson(1.0, size=(len(rows), self.bags)).astype(np.float64)
        for b, bag in enumerate(self._bags):
            bag._update_stats(X, rows, rewards, weights * poisson[:, b])

    # -- scoring --------------------------------------------------------------------------------------
    def _bag_means(self, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[bags, n, m]`` estimated rewards."""
        return np.stack([bag._mean_var(X, rows, need_var=False)[0] for bag in self._bags])

    def _bag_scores(self, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[bags, n, m]`` scores each bag is greedy on: its means, or its UCBs with ``alpha > 0``."""
        if hasattr(self._bags[0], "_scores"):  # the LinUCB kinds (alpha 0: the means)
            return np.stack([bag._scores(X, rows)[0] for bag in self._bags])
        return self._bag_means(X, rows)

    def _mean_var(self, X: np.ndarray, rows: np.ndarray, need_var: bool = True):
        means = self._bag_means(X, rows)
        # the bootstrap's own uncertainty: how much the resampled models disagree
        return means.mean(axis=0), (means.var(axis=0) if need_var else None)

    def _decide(self, X: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = X.shape[0]
        pick = self._rng.integers(0, self.bags, size=n)  # one bag per row, uniformly
        if self._thompson:
            return self._decide_thompson(X, rows, k, pick)
        scores = self._bag_scores(X, rows)
        chosen = top_k(scores[pick, np.arange(n)], k, self._rng)
        # exact: the mixture over the bag draw of each bag's (tie-broken) greedy slate
        props = np.mean([tie_propensities(s, chosen) for s in scores], axis=0)
        eps = getattr(self._bags[0], "epsilon", 0.0)
        if eps > 0:  # ε-greedy bases: a uniformly random slate instead, as EpsilonGreedy does
            m = scores.shape[-1]
            explore = np.flatnonzero(self._rng.random(n) < eps)
            if len(explore):
                chosen = chosen.copy()
                if k == 1:
                    chosen[explore, 0] = self._rng.integers(0, m, size=len(explore))
                else:
                    chosen[explore] = top_k(self._rng.random((len(explore), m)), k)
                props = np.mean([tie_propensities(s, chosen) for s in scores], axis=0)
            props = (1.0 - eps) * props + eps / m
        return chosen, props

    def _sampler(
        self, bag: BanditPolicy, X: np.ndarray, rows: np.ndarray, rng: np.random.Generator
    ) -> Callable[[int], np.ndarray]:
        """``draw(s)``: ``s`` posterior score draws ``[s, n, m]`` of a Thompson bag."""
        if isinstance(bag, HybridThompson):
            return bag._sampler(X, rows, rng)[0]
        mean, var = bag._mean_var(X, rows)  # LinearThompson: N(xᵀθ_a, v² xᵀA_a⁻¹x) per arm
        sd = bag.v * np.sqrt(np.maximum(var, 0.0))
        return lambda s: mean + sd * rng.standard_normal((s, *mean.shape))

    def _decide_thompson(
        self, X: np.ndarray, rows: np.ndarray, k: int, pick: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n, m = X.shape[0], rows.shape[-1]
        chosen = np.empty((n, k), np.int64)
        for b, bag in enumerate(self._bags):
            sel = np.flatnonzero(pick == b)
            if len(sel):  # the picked bag's own posterior draw, from its own generator
                draw = self._sampler(bag, X[sel], rows if rows.ndim == 1 else rows[sel], bag._rng)
                chosen[sel] = top_k(draw(1)[0], k)
        n_mc = self._bags[0].n_mc
        props = [
            mc_propensities(self._sampler(bag, X, rows, bag._rng), chosen, n_mc, m) for bag in self._bags
        ]
        return chosen, np.mean(props, axis=0)

    def _distribution(self, X, rows, rng, n_mc):
        probs = np.mean([bag._distribution(X, rows, rng, n_mc)[0] for bag in self._bags], axis=0)
        return probs, self._bag_means(X, rows).mean(axis=0)

    # -- state ----------------------------------------------------------------------------------------
    def _stat_columns(self) -> dict[str, np.ndarray]:
        return {f"bag{b}.{k}": v for b, bag in enumerate(self._bags) for k, v in bag._stat_columns().items()}

    def _load_stat_columns(self, table: pa.Table, n: int) -> None:
        for b, bag in enumerate(self._bags):
            prefix = f"bag{b}."
            names = [c for c in table.column_names if c.startswith(prefix)]
            if not names:
                raise SnapshotError(f"arms table has no columns of bag {b} ({prefix}*)")
            bag._arms = self._arms  # load_bundle replaced the wrapper's table: share it again
            bag._load_stat_columns(pa.table({c[len(prefix) :]: table.column(c) for c in names}), n)
            bag._n_stats, bag._spare_row = n, False  # the wrapper's _sync_arms adds the spare row

    def _shared_tables(self) -> dict[str, pa.Table]:
        return {f"bag{b}.{k}": t for b, bag in enumerate(self._bags) for k, t in bag._shared_tables().items()}

    def _load_shared_tables(self, tables: dict[str, pa.Table]) -> None:
        for b, bag in enumerate(self._bags):
            prefix = f"bag{b}."
            bag._load_shared_tables({k[len(prefix) :]: t for k, t in tables.items() if k.startswith(prefix)})

    def state(self) -> StateBundle:
        """As :meth:`BanditPolicy.state`, with the bags' generators in ``meta["bag_rngs"]``."""
        bundle = super().state()
        bundle.meta["bag_rngs"] = [_rng_meta(bag._rng) for bag in self._bags]
        return bundle

    def load_state(self, bundle: StateBundle) -> None:
        params = bundle.meta.get("params", {})
        for key, mine in (("base", self.base), ("bags", self.bags)):
            if key in params and params[key] != mine:
                raise SnapshotError(f"state meta params {key!r} is {params[key]!r}, this policy has {mine!r}")
        rngs = bundle.meta.get("bag_rngs")
        if not isinstance(rngs, list) or len(rngs) != self.bags:
            raise SnapshotError(f"state meta 'bag_rngs' must list the generators of {self.bags} bags")
        super().load_state(bundle)
        for bag, meta in zip(self._bags, rngs):
            bag._rng = _rng_from_meta(meta)
