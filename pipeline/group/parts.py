"""The additive part of each learner's state: what a worker shares with its group, and how a peer's
delta is added in.

A learner can share its state when what it learned is a **sum over events**: FTRL's ``z`` and ``n``,
the error memory's bucket sums, a bandit's per-arm statistics (Diag-LinUCB's ``λ + Σx²`` and
``Σrx``, LinUCB's ``A`` and ``b``, Beta-TS's ``α`` and ``β``, pulls and reward sums), the
featuriser's running moments — or when a sum of parameter deltas is how it is trained in parallel
(the neural ranker: asynchronous data-parallel SGD over double-hashed embeddings). Two workers'
contributions then add up to one worker's over both streams, in any order, to float tolerance.

Each adapter exposes its learner's additive state as named :class:`Part` objects and adds a
:class:`PartDelta` into the live learner in place. A part is *fixed* (arrays of a fixed shape,
deltas sparse by flat index) or *keyed* (one row per id, such as a bandit's arms, which workers
create in different orders: rows travel with their ids).

What is not a sum stays each worker's own: optimiser moments, replay buffers, metric windows,
drift detectors, the deduplicator. Learners whose state is not a sum (river models, discounted or
drift-reset bandits, a decaying error memory, collision-free vocabularies whose rows each worker
allocates in its own order) are refused with a :class:`~pipeline.errors.ConfigError` naming what
to change.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import ConfigError

__all__ = ["FEATURES_PART", "Part", "PartDelta", "RunnerShare", "SharedState", "shared_state"]

FEATURES_PART = "_features"


@dataclass
class Part:
    """One additive piece of state: ``arrays`` of a fixed shape, or rows of ``ids`` (first axis)."""

    arrays: dict[str, np.ndarray]
    ids: list[str] | None = None


@dataclass
class PartDelta:
    """What changed in a part: per array, ``values`` at flat ``indices`` (fixed parts) or rows of
    ``ids`` (keyed parts, ``indices`` empty)."""

    values: dict[str, np.ndarray]
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] | None = None

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values.values()) + sum(i.nbytes for i in self.indices.values())


class SharedState(abc.ABC):
    """A learner's additive state: :meth:`capture` copies it, :meth:`add` adds a peer's delta."""

    @abc.abstractmethod
    def capture(self) -> dict[str, Part]:
        """Copies of the additive arrays (later learning leaves them as they are)."""

    @abc.abstractmethod
    def add(self, deltas: Mapping[str, PartDelta]) -> None:
        """Add ``deltas`` (from :func:`pipeline.group.delta.diff`) into the live state."""

    def prior(self, part: str, ids: list[str]) -> dict[str, np.ndarray]:
        """Rows of a keyed part for ``ids`` as a fresh learner would create them."""
        raise KeyError(part)


def _add_flat(target: np.ndarray, delta: PartDelta, name: str) -> np.ndarray | None:
    """Add one fixed array's delta in place; returns the touched flat indices."""
    if name not in delta.values:
        return None
    idx = delta.indices[name]
    flat = target.reshape(-1)
    if not np.shares_memory(flat, target):
        raise ValueError(f"array {name!r} is not contiguous")
    if len(idx) and int(idx.max()) >= flat.size:
        raise ValueError(f"delta of {name!r} reaches index {int(idx.max())}, the array has {flat.size}")
    flat[idx] += delta.values[name].astype(flat.dtype, copy=False)  # indices are distinct (diff)
    return idx


# --------------------------------------------------------------------------------------- ftrl
class FTRLState(SharedState):
    """``z`` and ``n`` of every slot; the weights are recomputed where a delta touched."""

    def __init__(self, learner):
        self.learner = learner

    def capture(self) -> dict[str, Part]:
        return {"w": Part({"z": self.learner._z.copy(), "n": self.learner._n.copy()})}

    def add(self, deltas: Mapping[str, PartDelta]) -> None:
        delta = deltas.get("w")
        if delta is None:
            return
        lr = self.learner
        touched = [i for i in (_add_flat(lr._z, delta, "z"), _add_flat(lr._n, delta, "n")) if i is not None]
        if touched:
            slots = np.unique(np.concatenate(touched))
            lr._w[slots] = lr._weights(slots)


# ------------------------------------------------------------------------------- error memory
class ErrorMemoryState(SharedState):
    """The bucket sums and the key mean's sums, and the base learner's own additive state."""

    def __init__(self, learner):
        if learner.decay != 1.0:
            raise ConfigError(
                f"learner {learner.name!r}: a shared error memory needs decay = 1.0 (got {learner.decay}): "
                "decayed sums of several workers do not add up to one worker's"
            )
        self.learner = learner
        self.base = shared_state(learner._base)

    def capture(self) -> dict[str, Part]:
        mem, center = self.learner._memory, self.learner._center
        parts = {
            "memory": Part(
                {"count": mem._count.copy(), "sum_y": mem._sum_y.copy(), "sum_ybase": mem._sum_ybase.copy()}
            ),
            "center": Part({"total": center.total.copy(), "weight": np.array([center.weight])}),
        }
        parts.update({f"base.{k}": v for k, v in self.base.capture().items()})
        return parts

    def add(self, deltas: Mapping[str, PartDelta]) -> None:
        mem, center = self.learner._memory, self.learner._center
        if (d := deltas.get("memory")) is not None:
            for name, arr in (("count", mem._count), ("sum_y", mem._sum_y), ("sum_ybase", mem._sum_ybase)):
                _add_flat(arr, d, name)
            mem._empty = False
        if (d := deltas.get("center")) is not None:
            if "total" in d.values:
                width = int(d.indices["total"].max()) + 1 if len(d.indices["total"]) else 0
                if center.total.shape[0] < width:  # this worker has not seen a key yet
                    center.total = np.zeros(width)
                _add_flat(center.total, d, "total")
            if "weight" in d.values:
                center.weight += float(d.values["weight"].sum())
        inner = {k[len("base.") :]: v for k, v in deltas.items() if k.startswith("base.")}
        if inner:
            self.base.add(inner)


# ------------------------------------------------------------------------------------ bandits
#: bandit kinds whose per-arm statistics are all sums (hybrid models also keep a shared model
#: whose inverse would need a merge of its own)
_BANDIT_KINDS = ("diag_linucb", "linucb", "linear_ts", "beta_ts", "epsilon_greedy", "bootstrap")


class BanditState(SharedState):
    """Per arm, by id: pulls, reward sum and the statistics columns (inverses recomputed)."""

    def __init__(self, learner):
        if learner.kind not in _BANDIT_KINDS:
            raise ConfigError(
                f"learner {learner.name!r} ({learner.kind}) cannot be shared across workers; "
                f"shared bandits: {', '.join(_BANDIT_KINDS)}"
            )
        if learner.gamma != 1.0 or learner.reset_on_drift:
            raise ConfigError(
                f"learner {learner.name!r}: a shared bandit needs gamma = 1.0 and reset_on_drift = false "
                f"(got gamma={learner.gamma}, reset_on_drift={str(learner.reset_on_drift).lower()}): a "
                "discount or a reset on one worker is not a sum the others can add"
            )
        self.learner = learner
        self._fresh = None  # a clone that knows the prior of any arm (built on first use)

    @staticmethod
    def _columns(policy) -> dict[str, np.ndarray]:
        n = policy.n_arms
        cols = {"pulls": policy._pulls[:n], "reward_sum": policy._reward_sum[:n]}
        for name, arr in policy._stat_columns().items():
            if not (name.endswith("A_inv") or name.split(".")[-1].startswith("prior_")):
                cols[name] = arr
        return cols

    def capture(self) -> dict[str, Part]:
        policy = self.learner
        cols = {k: np.array(v, dtype=np.float64) for k, v in self._columns(policy).items()}
        return {"arms": Part(cols, ids=list(policy.arm_ids))}

    def prior(self, part: str, ids: list[str]) -> dict[str, np.ndarray]:
        if self._fresh is None:
            self._fresh = self.learner.clone()
        rows = self._fresh._rows(np.asarray(ids, dtype=object), "arms")
        return {k: np.array(v[rows], dtype=np.float64) for k, v in self._columns(self._fresh).items()}

    def add(self, deltas: Mapping[str, PartDelta]) -> None:
        delta = deltas.get("arms")
        if delta is None or not delta.ids:
            return
        policy = self.learner
        rows = policy._rows(np.asarray(delta.ids, dtype=object), "arms")
        cols = self._columns(policy)
        for name, values in delta.values.items():
            target = cols[name]
            np.add.at(target, rows, values.astype(target.dtype, copy=False))
        self._refresh_inverses(policy, rows)

    @staticmethod
    def _refresh_inverses(policy, rows: np.ndarray) -> None:
        targets = [policy, *getattr(policy, "_bags", [])]
        for p in targets:
            if hasattr(p, "_A_inv") and hasattr(p, "_A"):
                p._A_inv[rows] = np.linalg.inv(p._A[rows])


# ------------------------------------------------------------------------------------- neural
class NeuralState(SharedState):
    """The ranker's parameters (deltas summed: asynchronous data-parallel SGD)."""

    def __init__(self, learner):
        vocab = learner._spec.vocab
        if vocab != "double_hash":
            raise ConfigError(
                f'learner {learner.name!r}: a shared neural ranker needs vocab = "double_hash" (got '
                f"{vocab!r}): collision-free rows are allocated by each worker in its own order"
            )
        self.learner = learner

    def capture(self) -> dict[str, Part]:
        state = self.learner._model.state_dict()
        arrays = {k: v.detach().cpu().numpy().copy() for k, v in state.items() if v.is_floating_point()}
        return {"model": Part(arrays)}

    def add(self, deltas: Mapping[str, PartDelta]) -> None:
        import torch

        delta = deltas.get("model")
        if delta is None:
            return
        state = self.learner._model.state_dict()
        with torch.no_grad():
            for name in delta.values:
                tensor = state[name]
                flat = tensor.view(-1)
                idx = torch.from_numpy(delta.indices[name].astype(np.int64))
                flat.index_add_(0, idx, torch.from_numpy(delta.values[name]).to(tensor.dtype))


# ---------------------------------------------------------------------------------- featuriser
class FeaturizerState(SharedState):
    """The standardiser's running moments per numeric feature as sums ``(n, Σx, Σx²)``."""

    def __init__(self, featurizer):
        self.featurizer = featurizer

    def capture(self) -> dict[str, Part]:
        stats = self.featurizer._welford.stats
        names = sorted(stats)
        c = np.array([stats[k][0] for k in names], dtype=np.float64)
        mean = np.array([stats[k][1] for k in names], dtype=np.float64)
        m2 = np.array([stats[k][2] for k in names], dtype=np.float64)
        return {"moments": Part({"n": c, "s1": c * mean, "s2": m2 + c * mean * mean}, ids=names)}

    def prior(self, part: str, ids: list[str]) -> dict[str, np.ndarray]:
        zeros = np.zeros(len(ids))
        return {"n": zeros, "s1": zeros.copy(), "s2": zeros.copy()}

    def add(self, deltas: Mapping[str, PartDelta]) -> None:
        delta = deltas.get("moments")
        if delta is None or not delta.ids:
            return
        stats = self.featurizer._welford.stats
        for i, name in enumerate(delta.ids):
            c, mean, m2 = stats.get(name, (0.0, 0.0, 0.0))
            n = c + float(delta.values["n"][i])
            s1 = c * mean + float(delta.values["s1"][i])
            s2 = m2 + c * mean * mean + float(delta.values["s2"][i])
            if n <= 0:
                stats.pop(name, None)
                continue
            new_mean = s1 / n
            stats[name] = [n, new_mean, max(0.0, s2 - n * new_mean * new_mean)]


# ------------------------------------------------------------------------------------ registry
_ADAPTERS: dict[str, Callable] = {
    "ftrl": FTRLState,
    "error_memory": ErrorMemoryState,
    "neural": NeuralState,
    **dict.fromkeys(_BANDIT_KINDS, BanditState),
}


def shared_state(learner) -> SharedState:
    """The adapter of ``learner``'s additive state; ConfigError when it has none."""
    adapter = _ADAPTERS.get(learner.kind)
    if adapter is None:
        if learner.kind in ("hybrid_linucb", "hybrid_ts"):
            adapter = BanditState  # refuses with the list of shared bandits
        else:
            raise ConfigError(
                f"learner {learner.name!r} ({learner.kind}) cannot be shared across workers: its state is "
                f"not a sum; shared kinds: {', '.join(sorted(_ADAPTERS))}"
            )
    return adapter(learner)


class RunnerShare:
    """Every learner's and the featuriser's additive state, as parts named ``<learner>/<part>``."""

    def __init__(self, runner):
        self.adapters: dict[str, SharedState] = {lr.name: shared_state(lr) for lr in runner.learners}
        self.adapters[FEATURES_PART] = FeaturizerState(runner.featurizer)

    def capture(self) -> dict[str, Part]:
        return {
            f"{owner}/{k}": part for owner, ad in self.adapters.items() for k, part in ad.capture().items()
        }

    def prior(self, name: str, ids: list[str]) -> dict[str, np.ndarray]:
        owner, _, part = name.partition("/")
        return self.adapters[owner].prior(part, ids)

    def add(self, deltas: Mapping[str, PartDelta]) -> None:
        by_owner: dict[str, dict[str, PartDelta]] = {}
        for name, delta in deltas.items():
            owner, _, part = name.partition("/")
            if owner not in self.adapters:
                raise ValueError(f"delta part {name!r} names no learner of this worker")
            by_owner.setdefault(owner, {})[part] = delta
        for owner, parts in by_owner.items():
            self.adapters[owner].add(parts)
