"""``error_memory``: a fast ReLoop2 error memory beside any scoring learner (the slow base model).

``predict`` asks the base for ``y_base``, hashes each event's key into the memory and returns
``clip(y_base + λ · y_err, 0, 1)`` (see :mod:`pipeline.learners.error_memory.memory`). ``learn``
trains the base with its *own* predictions ``y_base`` — the base never sees compensated scores,
so its trajectory is exactly that of the base alone — and then writes ``(y, y_base)`` into the
memory. Example weights (``FeatureBatch.weights``) reach both: the base learns the batch with
them, and the memory adds ``w``, ``w · y`` and ``w · y_base`` per event. What the last predicted
batch was served (``y_base``, keys, memory slots) is kept, so the runner's predict-then-learn pays
for the base's forward pass and the hashing once. ``serve`` and ``remember`` are the two halves
without the base's training (e.g. to refresh the memory while the base is retrained elsewhere);
``replace_base`` swaps the model and empties the memory.

The key is the base's ``representation(batch)`` when it has one (the neural ranker's last hidden
layer; ``predict_with_representation(batch) -> (p, keys)``, if the base offers it, saves the
second forward pass), else the hashed features folded into ``key_dim`` dimensions
(:func:`~pipeline.learners.error_memory.keys.hashed_keys`).

Examples
--------
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.features import Featurizer
>>> rows = [b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i1","label":%d}' % (i, i, i % 4, i % 2)
...         for i in range(200)]
>>> fb = Featurizer().transform(decode_json(rows, EventRules())[0])
>>> model = ErrorMemoryLearner(base="ftrl", base_params={"bits": 16}, bits=6, tables=4, lam=1.0, gamma=1.0)
>>> model.name
'error_memory(ftrl)'
>>> y_base, y = model.predict_with_base(fb)
>>> bool((y == y_base).all())  # an empty memory returns the base prediction
True
>>> for _ in range(2):
...     model.learn(fb, model.predict(fb))
>>> y_base, y = model.predict_with_base(fb)
>>> y_base[:4].round(2).tolist(), y[:4].round(2).tolist()  # λ = γ = 1: the label mean of look-alikes
([0.48, 0.52, 0.48, 0.52], [0.0, 1.0, 0.0, 1.0])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from pipeline.features import FeatureBatch
from pipeline.learners.base import Learner, StateBundle
from pipeline.learners.checks import example_weights, integer
from pipeline.learners.error_memory.keys import KeyCenter, SimHash, check_key_fields, field_keys, hashed_keys
from pipeline.learners.error_memory.memory import ErrorMemory
from pipeline.observers import GaugeSource

__all__ = ["ErrorMemoryLearner", "Served", "score_base"]

#: 2: ``key_fields`` in the meta (1: ``item_weight``), and the memory's ``scale`` array
_STATE_FORMAT = 2
_PREFIX = "base."


class Served(NamedTuple):
    """One scored batch: base and compensated predictions, the keys and the memory slots read."""

    y_base: np.ndarray
    y: np.ndarray
    keys: np.ndarray
    slots: np.ndarray


def score_base(base: Learner, batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray | None]:
    """``(predictions, representation)`` of a base: one forward pass when it offers
    ``predict_with_representation``, else its predictions and None (the key is then computed apart)."""
    both = getattr(base, "predict_with_representation", None)
    return both(batch) if callable(both) else (base.predict(batch), None)


class ErrorMemoryLearner(Learner):
    """A base learner corrected by a bounded LSH error memory (ReLoop2).

    Parameters
    ----------
    base
        Learner kind of the base model (``"ftrl"``, ``"neural"``, ``"river:<estimator>"``, ...).
    base_params
        Constructor arguments of the base (built with :func:`~pipeline.learners.registry.build_learner`).
    bits, tables
        ``L`` and ``K``: ``K`` tables of ``2**L`` buckets.
    tau, lam, gamma
        Softmax temperature over the tables' log supports, compensation weight ``λ`` and error
        mix ``γ`` (see :class:`~pipeline.learners.error_memory.memory.ErrorMemory`).
    decay
        Multiplier of the memory's sums before each learned batch (1.0 = no forgetting); the
        default 0.98 halves an error's weight after 34 batches (34k events at 1,000 per batch).
    min_count
        Buckets with ``count <= min_count`` are empty.
    confidence
        ``z`` of the significance gate (0 = off; default half a standard error): each estimated error is shrunk by
        ``max(0, 1 - z² SE² / y_err²)``, so that the noise of thinly supported buckets is not
        added to the predictions on stationary stretches while a real shift (an error many standard
        errors from zero) passes almost whole.
    center
        Subtract the running mean of the keys before hashing (spreads a ReLU layer's keys over the buckets).
    key_dim
        Dimension of the hashed-feature key (ignored when the base has ``representation``).
    key_fields
        ``{field: weight}``: for each named field (``item_id``, ``user_id``, a categorical feature,
        or a cross ``"user_id:category"``) a seeded random ±1 vector of the event's value, times
        the weight, is added to every key (:func:`~pipeline.learners.error_memory.keys.field_keys`).
        Large weights make the memory pool errors per value of the field: ``{"item_id": 8}``
        corrects item-level drift (a popularity shift), ``{"user_id:category": 8}`` a shift of
        users' tastes. The key should name the level at which the data shifts.
    seed
        Seeds the key hashing and the LSH hyperplanes.
    name
        Label in metrics and snapshots (default ``error_memory(<base>)``).
    """

    kind = "error_memory"

    def __init__(
        self,
        base: str = "ftrl",
        base_params: dict[str, Any] | None = None,
        bits: int = 10,
        tables: int = 8,
        tau: float = 1.0,
        lam: float = 0.5,
        gamma: float = 0.0,
        decay: float = 0.98,
        min_count: float = 0.0,
        confidence: float = 0.5,
        center: bool = True,
        key_dim: int = 16,
        key_fields: dict[str, float] | None = None,
        seed: int = 0,
        name: str | None = None,
    ):
        from pipeline.learners.registry import build_learner

        if not isinstance(base, str) or not base or base == self.kind:
            raise ValueError(f"base must be the kind of another learner (e.g. 'ftrl'), got {base!r}")
        fields = check_key_fields(key_fields)
        key_dim, seed = integer("key_dim", key_dim, 1, 4096), integer("seed", seed, 0)
        super().__init__(name or f"{self.kind}({base})")
        self.base = base
        self.base_params = dict(base_params or {})
        self._memory = ErrorMemory(bits, tables, tau, lam, gamma, decay, min_count, confidence)
        self.bits, self.tables, self.tau, self.lam = bits, tables, tau, lam
        self.gamma, self.decay, self.min_count = gamma, decay, min_count
        self.confidence = confidence
        if not isinstance(center, bool):
            raise ValueError(f"center must be true or false, got {center!r}")
        self.center, self.key_dim, self.seed = center, key_dim, seed
        self.key_fields = fields
        self._base = build_learner(base, name=f"{self.name}.base", params=self.base_params)
        self._lsh: SimHash | None = None
        self._center = KeyCenter()
        self._served: tuple[FeatureBatch, Served] | None = None  # the last predicted batch, for its learn
        self._last_abs_comp = 0.0

    # ------------------------------------------------------------------------------ parts
    @property
    def base_learner(self) -> Learner:
        """The wrapped (slow) model."""
        return self._base

    @property
    def memory(self) -> ErrorMemory:
        """The (fast) error memory."""
        return self._memory

    def keys(self, batch: FeatureBatch) -> np.ndarray:
        """The memory key of every event: the base's ``representation`` or the hashed features."""
        represent = getattr(self._base, "representation", None)
        if callable(represent):
            keys = np.asarray(represent(batch), dtype=np.float32).reshape(len(batch), -1)
        else:
            keys = hashed_keys(batch, self.key_dim, self.seed)
        return self._with_fields(batch, keys)

    def _with_fields(self, batch: FeatureBatch, keys: np.ndarray) -> np.ndarray:
        if self.key_fields and len(batch):
            keys = keys + field_keys(batch, self.key_fields, keys.shape[1], self.seed)
        return keys

    def buckets(self, batch: FeatureBatch) -> np.ndarray:
        """Bucket id of every event in every table: int64 ``[n, tables]``."""
        return self._buckets_of(self.keys(batch))

    def _buckets_of(self, keys: np.ndarray) -> np.ndarray:
        if self._lsh is None or self._lsh.dim != keys.shape[1]:
            if self._lsh is not None and self._memory.entries():
                raise ValueError(
                    f"the base's representation changed width from {self._lsh.dim} to {keys.shape[1]}; "
                    "call replace_base() to start a new memory"
                )
            self._lsh = SimHash(keys.shape[1], self._memory.bits, self._memory.tables, self.seed)
            self._center = KeyCenter()
        return self._lsh.buckets(keys, self._center.mean if self.center else None)

    # ------------------------------------------------------------------------------ learner API
    def serve(self, batch: FeatureBatch) -> Served:
        """Score ``batch``: the base's predictions, the compensated ones, and where they were read."""
        return self.serve_base(batch, *score_base(self._base, batch))

    def serve_base(
        self, batch: FeatureBatch, y_base: np.ndarray, representation: np.ndarray | None = None
    ) -> Served:
        """:meth:`serve` for base predictions (and representation) computed elsewhere.

        Several memories can then share one base model (e.g. to compare memory configurations on
        one pass of an expensive base); without ``representation`` the key is :meth:`keys`.
        """
        if representation is None:
            keys = self.keys(batch)
        else:
            keys = self._with_fields(batch, np.asarray(representation, np.float32).reshape(len(batch), -1))
        y_base = np.asarray(y_base, dtype=np.float64)
        slots = self._memory.slots(self._buckets_of(keys), checked=False)
        y, _ = self._memory.read_slots(slots, y_base)
        return Served(y_base, y, keys, slots)

    def predict_with_base(self, batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
        """``(y_base, y)``: the base's predictions and the compensated ones."""
        served = self.serve(batch)
        self._served = (batch, served)
        self._last_abs_comp = float(np.abs(served.y - served.y_base).mean()) if len(batch) else 0.0
        return served.y_base, served.y

    def predict(self, batch: FeatureBatch) -> np.ndarray:
        return self.predict_with_base(batch)[1]

    def learn(self, batch: FeatureBatch, predictions: np.ndarray) -> None:
        if len(batch) == 0:
            return
        example_weights(batch)  # bad weights raise here, before the base has learned anything
        # the batch just predicted keeps what it was served; another one is served now, before the base learns
        served = (
            self._served[1] if self._served is not None and self._served[0] is batch else self.serve(batch)
        )
        self._served = None
        self._base.learn(batch, served.y_base)
        self.remember(batch, served)

    def remember(self, batch: FeatureBatch, served: Served) -> None:
        """Write a served batch into the memory (and the key mean) without training the base.

        Each event counts with its example weight (``batch.weights``) in the buckets' sums and the
        key mean; a batch without a positive weight changes neither, not even by the decay.
        """
        weights = example_weights(batch)
        if weights is not None and not weights.any():
            return
        self._memory.write_slots(served.slots, np.clip(batch.labels, 0.0, 1.0), served.y_base, weights)
        if self.center:
            self._center.update(served.keys, self._memory.decay, weights)

    def replace_base(self, base: Learner | None = None) -> None:
        """Swap in a new base model (default: a fresh one of the same kind) and empty the memory.

        The remembered ``Σy_base`` describe the old model's errors, so they cannot correct the new one.
        """
        if base is None:
            from pipeline.learners.registry import build_learner

            base = build_learner(self.base, name=f"{self.name}.base", params=self.base_params)
        self._base = base
        self._memory.reset()
        self._lsh = None
        self._center = KeyCenter()
        self._served = None

    def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        """Prometheus gauges: live buckets, mean |compensation| of the last batch, and the base's own."""
        own = [
            ("streamlearn_error_memory_entries", {"learner": self.name}, float(self._memory.entries())),
            ("streamlearn_error_memory_mean_abs_compensation", {"learner": self.name}, self._last_abs_comp),
        ]
        return own + (list(self._base.gauges()) if isinstance(self._base, GaugeSource) else [])

    # ------------------------------------------------------------------------------ state
    def state(self) -> StateBundle:
        inner = self._base.state()
        meta = {
            "format": _STATE_FORMAT,
            "bits": self._memory.bits,
            "tables": self._memory.tables,
            "seed": self.seed,
            "key_fields": self.key_fields,
            "key_dim": self._lsh.dim if self._lsh is not None else None,
            "lsh": "simhash-gaussian-float32",
            "base_kind": self.base,
            "base": inner.meta,
        }
        return StateBundle(
            tables={_PREFIX + k: v for k, v in inner.tables.items()},
            arrays={
                **self._memory.arrays(),
                **self._center.arrays(),
                **{_PREFIX + k: v for k, v in inner.arrays.items()},
            },
            tensors={_PREFIX + k: v for k, v in inner.tensors.items()},
            meta=meta,
        )

    def load_state(self, bundle: StateBundle) -> None:
        meta = bundle.meta
        saved = dict(meta)
        if int(saved.get("format", 1)) > _STATE_FORMAT:
            raise ValueError(
                f"error memory state has format {saved.get('format')}, this version reads up to {_STATE_FORMAT}"
            )
        if "key_fields" not in saved:  # format-1 states named only an item weight (0 = none)
            weight = float(saved.get("item_weight", 0.0))
            saved["key_fields"] = {"item_id": weight} if weight else {}
        mine_all = {"bits": self._memory.bits, "tables": self._memory.tables, "seed": self.seed}
        mine_all["key_fields"] = self.key_fields
        for key, mine in mine_all.items():
            if saved.get(key) != mine:
                raise ValueError(
                    f"error memory state has {key}={saved.get(key)!r}, this learner has {key}={mine!r}"
                )
        if meta.get("base_kind") != self.base:
            raise ValueError(
                f"error memory state wraps base {meta.get('base_kind')!r}, this learner wraps {self.base!r}"
            )

        def inner(parts: dict) -> dict:
            return {k[len(_PREFIX) :]: v for k, v in parts.items() if k.startswith(_PREFIX)}

        self._base.load_state(
            StateBundle(
                inner(bundle.tables), inner(bundle.arrays), inner(bundle.tensors), meta.get("base", {})
            )
        )
        self._memory.load_arrays(bundle.arrays)
        self._center.load_arrays(bundle.arrays)
        dim = meta.get("key_dim")
        self._lsh = (
            None if dim is None else SimHash(int(dim), self._memory.bits, self._memory.tables, self.seed)
        )
        self._served = None
        self._last_abs_comp = 0.0
