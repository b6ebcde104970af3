"""``river:<estimator>``: any river classifier as a streamlearn learner (adapter and baseline).

The estimator is named by its path inside river, e.g. ``river:linear_model.LogisticRegression``
or a pipeline ``river:preprocessing.StandardScaler|linear_model.LogisticRegression``. Each event
becomes a river feature dict: ``user_id=<u>``, ``item_id=<i>`` and each categorical feature
``name=value`` as one-hot entries, numeric features under their names. River learns one event at
a time, so this learner is per-event Python by nature: it is the baseline the vectorised
learners are measured against.

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

import numpy as np
import pyarrow as pa

from pipeline.features import FeatureBatch
from pipeline.learners.base import Learner, StateBundle
from pipeline.learners.checks import keywords
from pipeline.learners.safe_state import dumps, loads

__all__ = ["RiverLearner", "build_river_estimator", "event_dicts"]


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
        for x, y in zip(self._dicts(batch), (batch.labels > 0).tolist()):
            learn_one(x, y)
        self._cache = None

    def state(self) -> StateBundle:
        text = dumps(self._model)
        return StateBundle(tables={"model": pa.table({"json": pa.array([text], pa.large_string())})})

    def load_state(self, bundle: StateBundle) -> None:
        self._model = loads(bundle.tables["model"].column("json")[0].as_py())
        self._cache = None
