"""FTRL-Proximal logistic regression over hashed features (McMahan et al., KDD 2013), vectorised.

Per coordinate i the learner keeps ``z_i`` and ``n_i`` (sum of squared gradients); the weight is
computed lazily from them::

    w_i = 0                                                  if |z_i| <= l1
    w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

The weights are kept in a table beside ``z`` and ``n`` (derived state, recomputed on restore) and
refreshed for the coordinates a batch touched, so scoring is one gather.

A micro-batch is one FTRL step: the gradient of each coordinate is summed over the batch's events
(``np.bincount``), then ``sigma = (sqrt(n + g²) - sqrt(n)) / alpha``, ``z += g - sigma w`` and
``n += g²``. With batch size 1 this is exactly the per-event algorithm.

Example weights (``FeatureBatch.weights``) multiply each event's loss, hence its gradient: event
r contributes ``w_r (p_r - y_r) x_r`` to ``g`` (and so to ``n`` through ``g²``), so weight 0
leaves the state untouched.

Examples
--------
>>> import numpy as np
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.features import Featurizer
>>> rows = [b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i1","label":%d}' % (i, i, i % 2, i % 2)
...         for i in range(200)]
>>> events, _ = decode_json(rows, EventRules())
>>> fb = Featurizer().transform(events)
>>> model = FTRL(alpha=0.5, bits=16)
>>> for _ in range(5):
...     model.learn(fb, model.predict(fb))
>>> model.predict(fb)[:2].round(3).tolist()
[0.211, 0.789]
"""

from __future__ import annotations

import numpy as np

from pipeline.features import FeatureBatch
from pipeline.learners.base import Learner, StateBundle
from pipeline.learners.checks import example_weights, integer, number

__all__ = ["FTRL"]


class FTRL(Learner):
    """FTRL-Proximal logistic regression (the default learner: fast and a strong CTR baseline).

    Parameters
    ----------
    alpha, beta
        Per-coordinate learning-rate schedule ``alpha / (beta + sqrt(n))``.
    l1, l2
        Regularisation strengths (l1 gives sparse weights).
    bits
        The weight table has ``2**bits`` slots; hashed features are folded into it.
    name
        Label of this learner in metrics and snapshots.
    """

    kind = "ftrl"

    def __init__(
        self,
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.5,
        l2: float = 1.0,
        bits: int = 20,
        name: str | None = None,
    ):
        super().__init__(name)
        self.alpha = number("alpha", alpha, 0.0, low_open=True)
        self.beta = number("beta", beta, 0.0)
        self.l1 = number("l1", l1, 0.0)
        self.l2 = number("l2", l2, 0.0)
        self.bits = integer("bits", bits, 4, 30)
        self._z = np.zeros(1 << bits, dtype=np.float64)
        self._n = np.zeros(1 << bits, dtype=np.float64)
        self._w = np.zeros(1 << bits, dtype=np.float64)  # _weights of every slot, kept current
        self._scratch: np.ndarray | None = None  # see _group

    def _weights(self, slots: np.ndarray) -> np.ndarray:
        z = self._z[slots]
        n = self._n[slots]
        w = -(z - np.sign(z) * self.l1) / ((self.beta + np.sqrt(n)) / self.alpha + self.l2)
        w[np.abs(z) <= self.l1] = 0.0
        return w

    def _margin(self, batch: FeatureBatch, slots: np.ndarray, w: np.ndarray) -> np.ndarray:
        contrib = w * batch.values
        return np.add.reduceat(contrib, batch.indptr[:-1]) if len(batch) else np.zeros(0)

    def predict(self, batch: FeatureBatch) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros(0)
        slots = batch.slots(self.bits)
        margin = self._margin(batch, slots, self._w[slots])
        return 1.0 / (1.0 + np.exp(-np.clip(margin, -35.0, 35.0)))

    def learn(self, batch: FeatureBatch, predictions: np.ndarray) -> None:
        if len(batch) == 0:
            return
        slots = batch.slots(self.bits)
        labels = np.clip(batch.labels, 0.0, 1.0)
        # d logloss / d margin = p - y, spread to every feature of the row
        g_row = predictions - labels
        weights = example_weights(batch)
        if weights is not None:  # a weighted loss: each event's gradient times its weight
            g_row = g_row * weights
        g_nnz = g_row[batch.row_of_nnz] * batch.values
        uniq, inverse = self._group(slots)
        g = np.bincount(inverse, weights=g_nnz, minlength=len(uniq))
        w = self._w[uniq]
        n_old = self._n[uniq]
        n_new = n_old + g * g
        sigma = (np.sqrt(n_new) - np.sqrt(n_old)) / self.alpha
        self._z[uniq] += g - sigma * w
        self._n[uniq] = n_new
        self._w[uniq] = self._weights(uniq)

    def _group(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(distinct slots, index of each entry's slot among them)`` without sorting.

        ``np.unique`` sorts, which was a fifth of a replay's time; two scratch arrays over the
        table (not state) find the distinct slots in O(nnz). The gradient sums come out the same,
        since ``bincount`` adds each slot's entries in their batch order either way.
        """
        if self._scratch is None:
            self._scratch = np.empty(len(self._z), np.int64)
        scratch = self._scratch
        positions = np.arange(len(slots))
        scratch[slots] = positions  # the last entry of every slot wins
        uniq = slots[scratch[slots] == positions]
        scratch[uniq] = np.arange(len(uniq))
        return uniq, scratch[slots]

    def state(self) -> StateBundle:
        return StateBundle(arrays={"z": self._z.copy(), "n": self._n.copy()}, meta={"bits": self.bits})

    def load_state(self, bundle: StateBundle) -> None:
        z, n = bundle.arrays["z"], bundle.arrays["n"]
        if z.shape != self._z.shape or n.shape != self._n.shape:
            raise ValueError(
                f"ftrl state has {z.shape[0]} slots, this learner has bits={self.bits} ({1 << self.bits})"
            )
        self._z = np.array(z, dtype=np.float64)
        self._n = np.array(n, dtype=np.float64)
        self._w = self._weights(slice(None))
