"""``river:<estimator>``: any river classifier as a streamlearn learner (adapter and baseline).

The estimator is named by its path inside river, e.g. ``river:linear_model.LogisticRegression``
or a pipeline ``river:preprocessing.StandardScaler|linear_model.LogisticRegression``. Each event
becomes a river feature dict: ``user_id=<u>``, ``item_id=<i>`` and each categorical feature
``name=value`` as one-hot entries, numeric features under their names. River learns one event at
a time, so this learner is per-event Python by nature: it is the baseline the vectorised
learners are measured against.

Example weights (``FeatureBatch.weights``): an estimator whose ``learn_one`` takes ``w`` (the
last step's, for a pipeline: river routes ``w`` to the steps that take it, e.g.
``linear_model.LogisticRegression``) gets each event's weight; an event of weight 0 is not learned
at all. Other estimators learn an event ``floor(w)`` times, and once more with probability
``frac(w)`` (stochastic rounding, so the expected count is ``w``). The draw is a uniform taken from
the hash of the event's id and label, not from a generator: it is the same in every run and
every batching, and needs no state in the snapshot.

State is saved with :mod:`pipeline.learners.safe_state` (JSON, allow-listed classes; no pickle).

Examples
--------
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.features import Featurizer
>>> rows = [b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i1","label":%d}' % (i, i, i % 2, i % 2)
...         for i in range(100)]
>>> fb = Featurizer().transform(decode_json(rows, EventRules())[0])
>>> model = RiverLearner("linear_model.LogisticRegression")
>>> model.learn(fb, model.predict(fb))
>>> model.predict(fb)[:2].round(3).tolist()
[0.442, 0.559]
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pyarrow as pa

from pipeline.features import FeatureBatch
from pipeline.hashing import combine, hash_strings
from pipeline.learners.base import Learner, StateBundle
from pipeline.learners.checks import example_weights, keywords
from pipeline.learners.safe_state import dumps, loads

__all__ = ["RiverLearner", "build_river_estimator", "event_dicts", "learns_with_weights", "repeats"]


def build_river_estimator(spec: str, params: dict | None = None):
    """Instantiate ``module.Class`` (or ``A|B|C`` pipelines) from river; ``params`` go to the last step."""
    from river import compose

    steps = [s.strip() for s in spec.split("|") if s.strip()]
    if not steps:
        raise ValueError("river estimator spec is empty; expected e.g. 'linear_model.LogisticRegression'")
    built = []
    for i, step in enumerate(steps):
        module_name, _, class_name = step.rpartition(".")
        if not module_name or not class_name:
            raise ValueError(
                f"river estimator {step!r} must be 'module.Class', e.g. 'linear_model.LogisticRegression'"
            )
        try:
            module = importlib.import_module(f"river.{module_name}")
            cls = getattr(module, class_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"river has no estimator {step!r}: {exc}") from exc
        kwargs = keywords(cls, dict(params or {})) if i == len(steps) - 1 else {}
        try:
            built.append(cls(**kwargs))
        except TypeError as exc:
            raise ValueError(f"bad parameters for river {step!r}: {exc}") from exc
    return built[0] if len(built) == 1 else compose.Pipeline(*built)


def event_dicts(batch: FeatureBatch) -> list[dict]:
    """One river feature dict per event (one-hot ids and categories, raw numeric values)."""
    ev = batch.events
    users = ev.strings("user_id")
    items = ev.strings("item_id")
    cat = ev.column("cat_features")
    num = ev.column("num_features")
    cat_off = np.asarray(cat.offsets).tolist()
    num_off = np.asarray(num.offsets).tolist()
    cat_tokens = [f"{k}={v}" for k, v in zip(cat.keys.to_pylist(), cat.items.to_pylist())]
    num_keys = num.keys.to_pylist()
    num_vals = num.items.to_pylist()
    out = []
    for r in range(len(ev)):
        x = {"user_id=" + users[r]: 1.0, "item_id=" + items[r]: 1.0}
        for t in cat_tokens[cat_off[r] : cat_off[r + 1]]:
            x[t] = 1.0
        for j in range(num_off[r], num_off[r + 1]):
            x[num_keys[j]] = num_vals[j]
        out.append(x)
    return out


def learns_with_weights(model) -> bool:
    """Whether ``model.learn_one`` takes a sample weight ``w`` (a pipeline: its last step's)."""
    steps = getattr(model, "steps", None)  # compose.Pipeline
    final = list(steps.values())[-1] if isinstance(steps, dict) and steps else model
    return "w" in inspect.signature(final.learn_one).parameters


def repeats(batch: FeatureBatch, weights: np.ndarray) -> np.ndarray:
    """How often to learn each event for estimators without ``w``: ``floor(w)``, plus one with
    probability ``frac(w)``, the uniform drawn from the hash of the event's id and label.

    >>> from pipeline.events import decode_json, EventRules
    >>> from pipeline.features import Featurizer
    >>> rows = [b'{"event_id":"e%d","ts":%d,"user_id":"u","item_id":"i","label":0}' % (i, i)
    ...         for i in range(4000)]
    >>> fb = Featurizer().transform(decode_json(rows, EventRules())[0])
    >>> k = repeats(fb, np.full(len(fb), 1.25))
    >>> sorted(set(k.tolist())), bool(abs(k.mean() - 1.25) < 0.02)
    ([1, 2], True)
    """
    h = combine(
        hash_strings(batch.events.column("event_id"), "river_weight"), (batch.labels > 0).astype(np.uint64)
    )
    uniform = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53  # 53 random bits -> [0, 1)
    whole = np.floor(weights)
    return (whole + (uniform < weights - whole)).astype(np.int64)


class RiverLearner(Learner):
    """Wraps a river binary classifier.

    Parameters
    ----------
    estimator
        Path of the estimator inside river (``linear_model.LogisticRegression``) or a pipeline
        ``preprocessing.StandardScaler|linear_model.LogisticRegression``.
    params
        Keyword arguments for the (last) estimator.
    name
        Label in metrics and snapshots; defaults to ``river:<estimator>``.
    """

    kind = "river"

    def __init__(
        self,
        estimator: str = "linear_model.LogisticRegression",
        params: dict | None = None,
        name: str | None = None,
    ):
        super().__init__(name or f"river:{estimator}")
        self.estimator = estimator
        self.params_ = dict(params or {})
        self._model = build_river_estimator(estimator, self.params_)
        self._cache: tuple[FeatureBatch, list[dict]] | None = None

    def params(self) -> dict:
        return {"estimator": self.estimator, "params": self.params_, "name": self.name}

    def _dicts(self, batch: FeatureBatch) -> list[dict]:
        # predict and learn see the same batch back to back; build the dicts once
        if self._cache is None or self._cache[0] is not batch:
            self._cache = (batch, event_dicts(batch))
        return self._cache[1]

    def predict(self, batch: FeatureBatch) -> np.ndarray:
        model = self._model
        return np.array(
            [model.predict_proba_one(x).get(True, 0.0) for x in self._dicts(batch)], dtype=np.float64
        )

    def learn(self, batch: FeatureBatch, predictions: np.ndarray) -> None:
        learn_one = self._model.learn_one
        events = zip(self._dicts(batch), (batch.labels > 0).tolist())
        weights = example_weights(batch)
        if weights is None:
            for x, y in events:
                learn_one(x, y)
        elif learns_with_weights(self._model):
            for (x, y), w in zip(events, weights.tolist()):
                # weight 0: not learned at all, since a river optimiser's step moves the weights
                # even with a zero gradient (Adam's momentum) and counts the iteration
                if w > 0:
                    learn_one(x, y, w=w)
        else:
            for (x, y), k in zip(events, repeats(batch, weights).tolist()):
                for _ in range(k):
                    learn_one(x, y)
        self._cache = None

    def state(self) -> StateBundle:
        text = dumps(self._model)
        return StateBundle(tables={"model": pa.table({"json": pa.array([text], pa.large_string())})})

    def load_state(self, bundle: StateBundle) -> None:
        self._model = loads(bundle.tables["model"].column("json")[0].as_py())
        self._cache = None
