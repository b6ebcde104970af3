"""Off-policy evaluation of bandit policies on a logged stream (the engine of ``streamlearn evaluate``).

:class:`PrequentialEvaluation` wraps a policy as a learner for :class:`~pipeline.runner.Runner`,
so that a log is read, validated, deduplicated and featurised exactly as a replay does. For every
micro-batch, *before* the policy learns it, :meth:`~PrequentialEvaluation.predict` records what
the policy would have done with each logged context: its probability of choosing the logged item
among the event's own ``candidates`` where the log names them (the set the logging policy chose
from), else among a fixed set (:meth:`BanditPolicy.distribution`), its reward estimates (the reward
model of doubly robust estimates: ``q̂`` of the logged item and ``Σ_a π(a|x) q̂(x, a)``), and one
choice drawn from that distribution (for the replay estimator). Then the policy learns the batch
from every logged event, as it would online. :meth:`~PrequentialEvaluation.rounds` returns the
records as :class:`~pipeline.ope.LoggedBandit` inputs.

:func:`item_position_model` is the reward model for a *context-free* target given as
probabilities per item and position: per-item mean rewards, cross-fitted over two folds so that
no event's ``q̂`` was fitted on its own reward.

Examples
--------
>>> probs = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
>>> sample_choices(probs, np.random.default_rng(0)).tolist()
[1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.events.candidates import logged_candidate_groups
from pipeline.features import FeatureBatch
from pipeline.learners.bandits.arms import ArmTable
from pipeline.learners.bandits.base import BanditPolicy
from pipeline.learners.base import Learner, StateBundle

__all__ = [
    "PrequentialEvaluation",
    "check_target_table",
    "item_position_model",
    "join_item_position",
    "sample_choices",
]

_TARGET_SCHEMA = pa.schema([("item_id", pa.string()), ("position", pa.int64()), ("prob", pa.float64())])

_COLUMNS = (
    "reward",
    "pscore",
    "position",
    "candidate",
    "target_prob",
    "q_hat",
    "q_target",
    "choice",
    "n_candidates",
)
_INTEGER = frozenset({"position", "candidate", "choice", "n_candidates"})


def sample_choices(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One candidate index per row of ``probs`` ``[n, m]``, drawn by inverse CDF (one uniform per row)."""
    cum = np.cumsum(probs, axis=1)
    u = (1.0 - rng.random(len(probs))) * cum[:, -1]  # in (0, total]: a zero-probability prefix is never hit
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


class PrequentialEvaluation(Learner):
    """A bandit policy run over a log: records its view of each batch, then lets it learn the batch.

    Parameters
    ----------
    policy
        The policy to evaluate (it learns; pass a fresh one).
    candidates
        Item ids the policy chooses among where an event does not name its own ``candidates``
        (``[m]``, m >= 1).
    seed
        Seeds the draws (replay choices, Thompson sampling's Monte-Carlo probabilities).
    n_mc
        Monte-Carlo draws per event for Thompson sampling (default: the policy's own, or 100).
    """

    kind = "prequential_evaluation"

    def __init__(
        self, policy: BanditPolicy, candidates: Sequence[str], seed: int = 0, n_mc: int | None = None
    ):
        super().__init__(policy.name)
        if not isinstance(policy, BanditPolicy):
            raise TypeError(f"policy must be a BanditPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.candidates = np.asarray(list(candidates), dtype=object)
        if not len(self.candidates):
            raise ValueError("candidates must hold at least one item id")
        self.seed = seed
        self.n_mc = n_mc
        self._lookup = ArmTable(list(self.candidates))  # same hash namespace as FeatureBatch.item_hash
        self._rng = np.random.default_rng(seed)
        self._parts: dict[str, list[np.ndarray]] = {c: [] for c in (*_COLUMNS, "own_candidates")}

    def predict(self, batch: FeatureBatch) -> np.ndarray:
        """Record the policy's distribution over each event's candidates, then its predictions.

        An event that carries ``candidates`` is evaluated on exactly that set (the logged
        decision); the others on the fixed ``candidates`` given to the constructor.
        """
        n = len(batch)
        if n:
            X = self.policy.batch_contexts(batch)
            record = {c: np.empty(n, np.int64 if c in _INTEGER else np.float64) for c in _COLUMNS}
            record["reward"][:] = batch.labels
            record["pscore"][:] = batch.events.propensity
            record["position"][:] = batch.events.position
            own = np.zeros(n, bool)
            for rows, ids, where in logged_candidate_groups(batch.events):
                self._record(record, rows, X[rows], ids, where, len(ids[0]))
                own[rows] = True
            rest = np.flatnonzero(~own)
            if len(rest):
                where = self._lookup.find(batch.item_hash[rest])
                self._record(record, rest, X[rest], self.candidates, where, len(self.candidates))
            record["own_candidates"] = own
            for c in (*_COLUMNS, "own_candidates"):
                self._parts[c].append(record[c])
        return self.policy.predict(batch)

    def _record(self, record, rows, X, candidates, where, m) -> None:
        probs, means = self.policy.distribution(X, candidates, self._rng, self.n_mc)
        means = np.clip(means, 0.0, 1.0)  # as predict does: rewards are click probabilities
        hit = where >= 0
        at, col = np.arange(len(rows)), np.maximum(where, 0)
        record["candidate"][rows] = where
        record["target_prob"][rows] = np.where(hit, probs[at, col], 0.0)
        record["q_hat"][rows] = np.where(hit, means[at, col], 0.0)  # weight 0 when missed: any value does
        record["q_target"][rows] = (probs * means).sum(axis=1)
        record["choice"][rows] = sample_choices(probs, self._rng)
        record["n_candidates"][rows] = m

    def learn(self, batch: FeatureBatch, predictions: np.ndarray) -> None:
        self.policy.learn(batch, predictions)

    def state(self) -> StateBundle:
        return self.policy.state()

    def load_state(self, bundle: StateBundle) -> None:
        self.policy.load_state(bundle)

    def records(self) -> dict[str, np.ndarray]:
        """Every recorded event in log order: ``reward``, ``pscore`` (NaN if not logged), ``position``
        (-1 if not logged), ``candidate`` (the logged item's index in the event's candidates, -1 if
        absent), ``target_prob``, ``q_hat``, ``q_target``, ``choice`` (a candidate index drawn from
        the policy's distribution), ``n_candidates`` (the size of the set it was evaluated on) and
        ``own_candidates`` (True where that set was the event's own ``candidates``)."""
        empty = {"own_candidates": bool, **{c: np.int64 for c in _INTEGER}}
        return {
            c: np.concatenate(v) if v else np.zeros(0, empty.get(c, float)) for c, v in self._parts.items()
        }


def check_target_table(table: pa.Table) -> pa.Table:
    """A target policy's probabilities, validated: column ``pi_e`` (per event) or ``item_id, position, prob``.

    Returns just those columns as float64 ``pi_e``, or string / int64 / float64; raises
    ``ValueError`` naming the offending column.

    >>> check_target_table(pa.table({"item_id": ["a"], "position": [0], "prob": [2.0]}))
    Traceback (most recent call last):
    ...
    ValueError: column 'prob' must hold probabilities in [0, 1] without nulls
    """
    names = table.column_names
    if "pi_e" in names:
        _check_probs(table, "pi_e")
        return table.select(["pi_e"]).cast(pa.schema([("pi_e", pa.float64())]))
    missing = [c for c in _TARGET_SCHEMA.names if c not in names]
    if missing:
        raise ValueError(
            f"needs column pi_e, or columns item_id, position, prob (missing {', '.join(missing)}); "
            f"it has {', '.join(names) or 'no columns'}"
        )
    _check_probs(table, "prob")
    for col in ("item_id", "position"):
        if table.column(col).null_count:
            raise ValueError(f"column {col!r} has null values")
    try:
        table = table.select(_TARGET_SCHEMA.names).cast(_TARGET_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"columns item_id, position, prob must be string, integer, number: {exc}") from None
    if table.group_by(["item_id", "position"]).aggregate([([], "count_all")]).num_rows != table.num_rows:
        raise ValueError("(item_id, position) pairs must be unique")
    return table


def _check_probs(table: pa.Table, col: str) -> None:
    arr = table.column(col)
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
        raise ValueError(f"column {col!r} must be numeric, got {arr.type}")
    v = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if arr.null_count or not np.isfinite(v).all() or (len(v) and (v.min() < 0 or v.max() > 1)):
        raise ValueError(f"column {col!r} must hold probabilities in [0, 1] without nulls")


def join_item_position(items, positions: np.ndarray, target: pa.Table) -> tuple[np.ndarray, int]:
    """Target probability of each logged (item, position) from a checked table; 0 for absent pairs.

    Returns the probabilities in event order and how many events had no pair in the table.

    >>> target = pa.table({"item_id": ["a", "b"], "position": [0, 0], "prob": [0.7, 0.3]})
    >>> join_item_position(pa.array(["b", "c", "a"]), np.array([0, 0, 0]), target)
    (array([0.3, 0. , 0.7]), 1)
    """
    n = len(positions)
    joined = (
        pa.table({"row": np.arange(n), "item_id": _array(items).cast(pa.string()), "position": positions})
        .join(target, ["item_id", "position"], join_type="left outer")
        .sort_by("row")
    )
    prob = joined.column("prob").to_numpy(zero_copy_only=False).astype(np.float64)
    missing = np.isnan(prob)
    return np.where(missing, 0.0, prob), int(missing.sum())


def item_position_model(
    items: pa.Array,
    positions: np.ndarray,
    rewards: np.ndarray,
    target: pa.Table,
    seed: int = 0,
    smoothing: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted per-item mean rewards as DR's reward model for an item/position target.

    Events are split into two random halves; each half gets the model fitted on the other:
    ``q̂(a) = (Σ r + smoothing·r̄) / (count + smoothing)`` over that half's events of item ``a``
    (``r̄`` its mean reward, which unseen items get). The target's expected reward at position ``j``
    is ``Σ_a prob(a, j) q̂(a)`` (0 at positions the target does not fill).

    Parameters
    ----------
    items, positions, rewards
        The logged events' item ids, positions and rewards.
    target
        Columns ``item_id`` (string), ``position`` (int) and ``prob``.
    seed
        Seeds the split.
    smoothing
        Pseudo-count of the shrinkage towards the half's mean reward.

    Returns
    -------
    q_hat, q_target
        Per event: the model's reward of the logged item, the target's expected reward.

    Examples
    --------
    >>> target = pa.table({"item_id": ["a", "b"], "position": [0, 0], "prob": [0.75, 0.25]})
    >>> q_hat, q_target = item_position_model(pa.array(["a", "b"] * 4), np.zeros(8, int),
    ...                                       np.array([1.0, 0.0] * 4), target, smoothing=0.0)
    >>> q_hat.tolist(), q_target.tolist()  # each half sees a -> 1, b -> 0
    ([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], [0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75])
    """
    n = len(rewards)
    items = _array(items).cast(pa.string())
    target_items = _array(target.column("item_id")).cast(pa.string())
    universe = pa.concat_arrays([items, target_items]).unique()
    item_idx = _index_in(items, universe)
    target_idx = _index_in(target_items, universe)
    fold = np.random.default_rng(seed).permutation(n) % 2
    k = len(universe)
    q = np.empty((2, k))  # q[f] is fitted on fold f
    for f in (0, 1):
        sel = fold == f
        mean = float(rewards[sel].mean()) if sel.any() else 0.0
        sums = np.bincount(item_idx[sel], weights=rewards[sel], minlength=k)
        counts = np.bincount(item_idx[sel], minlength=k)
        q[f] = (sums + smoothing * mean) / (counts + smoothing)
    table_pos = target.column("position").to_numpy()
    pos_values, pos_idx = np.unique(table_pos, return_inverse=True)
    by_pos = np.zeros((len(pos_values), k))
    np.add.at(by_pos, (pos_idx, target_idx), target.column("prob").to_numpy())
    expected = by_pos @ q.T  # [positions, fold of the model]
    other = 1 - fold
    slot = np.searchsorted(pos_values, positions)
    slot_c = np.minimum(slot, len(pos_values) - 1)
    known = pos_values[slot_c] == positions
    q_target = np.where(known, expected[slot_c, other], 0.0)
    return q[other, item_idx], q_target


def _array(values) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _index_in(values, universe: pa.Array) -> np.ndarray:
    return pc.index_in(values, value_set=universe).to_numpy(zero_copy_only=False).astype(np.int64)
