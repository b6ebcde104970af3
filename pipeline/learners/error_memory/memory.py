"""The error memory of ReLoop2 (Zhu et al., KDD 2023, arXiv 2306.08808) as an LSH sketch.

``K`` tables of ``2**L`` buckets; the bucket of a key in table k holds ``count``, ``Σy`` and
``Σy_base`` (``y_base``: the base model's prediction when the event was served). Its size is fixed
by construction: ``3 · K · 2**L`` float64.

Read, for an event with buckets ``b_k`` and base prediction ``y_base``::

    ȳ_k = Σy / count,   ȳbase_k = Σy_base / count                       (per live bucket)
    a_k = softmax_k(s_k / τ),   s_k = log count_k                         (empty buckets: a_k = 0)
    ȳ = Σ a_k ȳ_k,   ȳ_base = Σ a_k ȳbase_k
    y_err = γ (ȳ − y_base) + (1 − γ)(ȳ − ȳ_base)
    ŷ = clip(y_base + λ · y_err, 0, 1)

**The similarity.** Without stored keys, a bucket's support is what tells the tables apart. We use
``s_k = log count_k``, which needs no further normalisation: ``softmax(log c / τ)`` is
``c_k^(1/τ) / Σ_j c_j^(1/τ)``, independent of the scale of the counts, never uniform unless the
supports are equal. At ``τ = 1`` the read is the pooled estimate (``ȳ = Σ_k Σy_k / Σ_k count_k``:
every remembered event counts once per table it shares with the query); ``τ < 1`` moves the
weight to the best-supported table, ``τ → ∞`` to a plain mean over tables. A bucket is *empty*
(contributes nothing) while ``count <= min_count``; an event whose buckets are all empty keeps its
base prediction, and so does every event while the memory is empty.

Write: ``count += 1``, ``Σy += y``, ``Σy_base += y_base`` in each table, after multiplying every
sum by ``decay`` (once per written batch), so old errors fade and buckets whose decayed support
falls to ``min_count`` count as empty again. With example weights an event adds ``w``, ``w · y``
and ``w · y_base`` (an integer weight k: the event written k times); a batch without a positive
weight writes nothing, not even the decay.

Examples
--------
>>> import numpy as np
>>> mem = ErrorMemory(bits=2, tables=2, tau=1.0, lam=1.0, gamma=0.0)
>>> mem.write(np.array([[0, 1], [0, 2]]), labels=np.array([1.0, 0.0]), y_base=np.array([0.25, 0.5]))
>>> mem.entries()
3
>>> pred, err = mem.read(np.array([[0, 3]]), y_base=np.array([0.5]))
>>> float(err[0]), float(pred[0])  # table 1's bucket 3 is empty; table 0: ȳ - ȳ_base = 0.5 - 0.375
(0.125, 0.625)
"""

from __future__ import annotations

import numpy as np

from pipeline.learners.checks import integer, number

__all__ = ["ErrorMemory"]

#: the stored sums are the true ones over the running product of decays; below this product it is
#: folded back in (every 6,900 batches at decay 0.95), far from where 1 / product would overflow
_RESCALE_BELOW = 1e-150


class ErrorMemory:
    """The bounded, vectorised memory of (count, Σy, Σy_base) per LSH bucket.

    Parameters
    ----------
    bits
        ``L``: bucket ids have ``L`` bits, each table holds ``2**L`` buckets (1..24).
    tables
        ``K``: number of independent hash tables (1..256).
    tau
        Softmax temperature over the tables' log supports (> 0).
    lam
        ``λ``: weight of the compensation, 0 = the base prediction unchanged.
    gamma
        ``γ``: share of the error measured against the current base prediction (``ȳ − y_base``)
        rather than against the remembered base predictions (``ȳ − ȳ_base``).
    decay
        Multiplier of every sum before each written batch, in (0, 1]; 1 = no forgetting.
    min_count
        A bucket with ``count <= min_count`` is empty.
    confidence
        ``z`` of the significance gate on the error (0 = off): ``y_err`` is multiplied by
        ``max(0, 1 - z² SE² / y_err²)``, where ``SE² = p(1-p) / n`` is the squared standard error
        of the remembered label mean (``n``: the support of the tables read, ``p``: that mean,
        smoothed by half an event), so that errors within noise of zero are shrunk to nothing.
    """

    def __init__(
        self,
        bits: int = 10,
        tables: int = 8,
        tau: float = 1.0,
        lam: float = 0.5,
        gamma: float = 0.0,
        decay: float = 0.98,
        min_count: float = 0.0,
        confidence: float = 0.0,
    ):
        self.bits, self.tables = integer("bits", bits, 1, 24), integer("tables", tables, 1, 256)
        self.tau = number("tau", tau, 0.0, low_open=True)
        self.lam = number("lam", lam, 0.0, 1.0)
        self.gamma = number("gamma", gamma, 0.0, 1.0)
        self.decay = number("decay", decay, 0.0, 1.0, low_open=True)
        self.min_count = number("min_count", min_count, 0.0)
        self.confidence = number("confidence", confidence, 0.0, 100.0)
        self._offsets = (np.arange(self.tables, dtype=np.int64) << self.bits)[:, None]
        self._work = np.zeros(0)
        self._tiled = np.zeros(0)
        self.reset()

    @property
    def size(self) -> int:
        """Buckets over all tables (``K · 2**L``)."""
        return self.tables << self.bits

    @property
    def count(self) -> np.ndarray:
        """Support of every bucket, ``[K, 2**L]`` (a read-only copy)."""
        return self._true(self._count)

    @property
    def sum_y(self) -> np.ndarray:
        """Σy of every bucket, ``[K, 2**L]`` (a read-only copy)."""
        return self._true(self._sum_y)

    @property
    def sum_ybase(self) -> np.ndarray:
        """Σy_base of every bucket, ``[K, 2**L]`` (a read-only copy)."""
        return self._true(self._sum_ybase)

    def _true(self, flat: np.ndarray) -> np.ndarray:
        out = (flat * self._scale).reshape(self.tables, -1)
        out.flags.writeable = False
        return out

    def reset(self) -> None:
        """Forget everything (e.g. when the base model is replaced)."""
        # flat arrays indexed by table · 2**L + bucket: reads are np.take, writes np.add.at. They hold
        # the sums divided by _scale (the product of every decay so far): decaying a batch is then one
        # multiplication of _scale, not of the whole memory, and a write adds its values / _scale
        self._count = np.zeros(self.size)
        self._sum_y = np.zeros(self.size)
        self._sum_ybase = np.zeros(self.size)
        self._scale = 1.0
        self._empty = True  # decaying an empty memory changes nothing; skipping it keeps the first sums exact

    def entries(self) -> int:
        """Live (non-empty) buckets over all tables."""
        return int(np.count_nonzero(self._count > self.min_count / self._scale))

    def slots(self, buckets: np.ndarray, checked: bool = True) -> np.ndarray:
        """Positions ``table · 2**L + bucket`` of ``buckets[n, K]`` in the flat sums, ``[K, n]``.

        Table-major, so that the sums over the tables add ``K`` contiguous rows (a reduction along a
        short last axis costs numpy several times more). ``checked=False`` skips the range check,
        for ids that come straight from a :class:`~pipeline.learners.error_memory.keys.SimHash`.
        """
        buckets = np.asarray(buckets, dtype=np.int64)
        if buckets.ndim != 2 or buckets.shape[1] != self.tables:
            raise ValueError(f"buckets must have shape (n, {self.tables}), got {buckets.shape}")
        if checked and buckets.size and (buckets.min() < 0 or buckets.max() >> self.bits):
            raise ValueError(
                f"bucket ids must be in [0, {1 << self.bits}), got {buckets.min()}..{buckets.max()}"
            )
        return np.add(buckets.T, self._offsets, order="C")

    # ------------------------------------------------------------------------------ read
    def read(self, buckets: np.ndarray, y_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Compensated predictions and the estimated errors ``y_err`` for ``buckets[n, K]``."""
        return self.read_slots(self.slots(buckets), y_base)

    def read_slots(self, slots: np.ndarray, y_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read` for positions from :meth:`slots`."""
        y_base = np.asarray(y_base, dtype=np.float64)
        if len(self._work) < 3 * slots.size:  # reused: fresh temporaries this size cost page faults
            self._work = np.empty(3 * slots.size)
        work = self._work[: 3 * slots.size].reshape(3, *slots.shape)
        count = np.take(self._count, slots, out=work[0], mode="clip")
        if self.tau == 1.0 and self.min_count == 0.0:
            # a_k ∝ count_k, so ȳ = Σ_k Σy_k / Σ_k count_k; empty buckets hold zeros: plain sums
            weights = None
            total = count.sum(axis=0)
            support = np.einsum("kn,kn->n", count, count) if self.confidence else None
        else:
            # a_k ∝ count_k^(1/τ) on live buckets; with u_k = a_k / count_k both means are ratios
            # of u-weighted sums, ȳ = Σ u Σy / Σ u count (scaled by the row's top count: no overflow)
            live = count > self.min_count / self._scale
            top = np.where(live, count, 0.0).max(axis=0, keepdims=True)
            rel = np.divide(count, top, out=np.zeros_like(count), where=live)
            weights = np.divide(rel ** (1.0 / self.tau), count, out=np.zeros_like(count), where=live)
            total = (weights * count).sum(axis=0)
            support = np.einsum("kn,kn,kn->n", weights, count, count) if self.confidence else None
        has = total > 0
        if self.lam == 0.0 or not has.any():
            return y_base.copy(), np.zeros(len(y_base))
        sum_y = np.take(self._sum_y, slots, out=work[1], mode="clip")
        sum_ybase = np.take(self._sum_ybase, slots, out=work[2], mode="clip")
        if weights is not None:
            sum_y, sum_ybase = weights * sum_y, weights * sum_ybase
        total[~has] = 1.0
        y_mem = sum_y.sum(axis=0) / total
        y_err = y_mem - sum_ybase.sum(axis=0) / total
        if self.gamma:
            y_err = self.gamma * (y_mem - y_base) + (1.0 - self.gamma) * y_err
        y_err[~has] = 0.0
        if support is not None:
            y_err *= self._gate(y_mem, y_err, self._scale * support / total)
        return np.clip(y_base + self.lam * y_err, 0.0, 1.0), y_err

    def _gate(self, y_mem: np.ndarray, y_err: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Positive-part shrinkage ``max(0, 1 - z² SE² / y_err²)`` of each error towards 0."""
        p = (y_mem * n + 0.5) / (n + 1.0)
        noise = self.confidence**2 * p * (1.0 - p) / np.maximum(n, 1e-12)
        sq = y_err * y_err
        ratio = np.divide(noise, sq, out=np.full_like(sq, np.inf), where=sq > 0)
        return np.maximum(0.0, 1.0 - ratio)

    # ------------------------------------------------------------------------------ write
    def write(
        self, buckets: np.ndarray, labels: np.ndarray, y_base: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        """Decay every sum once, then add each event to its bucket in every table.

        ``weights`` (checked by the caller, >= 0; None: all 1) weigh each event's count and sums.
        """
        self.write_slots(self.slots(buckets), labels, y_base, weights)

    def write_slots(
        self, slots: np.ndarray, labels: np.ndarray, y_base: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        """:meth:`write` for positions from :meth:`slots`."""
        if slots.size == 0 or (weights is not None and not weights.any()):
            return
        if self.decay != 1.0 and not self._empty:
            self._scale *= self.decay
            if self._scale < _RESCALE_BELOW:  # long before 1 / _scale could overflow
                self._fold_scale()
        unit = 1.0 / self._scale
        # slots are [K, n], so an event's value repeats K times; tiled explicitly (into a reused array),
        # because numpy 2.4's add.at reads garbage when the values are broadcast over a 2-D index
        flat = slots.ravel()
        if len(self._tiled) < flat.size:
            self._tiled = np.empty(flat.size)
        tiled = self._tiled[: flat.size]
        self._empty = False
        if weights is None:
            step: float | np.ndarray = unit
            np.add.at(self._count, flat, unit)
        else:
            step = weights * unit  # one per event
            np.copyto(tiled.reshape(slots.shape), step)
            np.add.at(self._count, flat, tiled)
        for total, values in ((self._sum_y, labels), (self._sum_ybase, y_base)):
            np.multiply(values, step, out=tiled.reshape(slots.shape), casting="unsafe")
            np.add.at(total, flat, tiled)

    # ------------------------------------------------------------------------------ state
    def arrays(self) -> dict[str, np.ndarray]:
        """The state: ``count``, ``sum_y`` and ``sum_ybase`` as stored (each ``[K, 2**L]``) and ``scale``.

        The true sums are the stored ones times ``scale`` (the decay not yet folded in; see
        :attr:`count`). Keeping both as they are, rather than folding, lets a memory restored from
        them continue bit for bit like the one that wrote them.
        """
        return {
            "count": self._count.reshape(self.tables, -1).copy(),
            "sum_y": self._sum_y.reshape(self.tables, -1).copy(),
            "sum_ybase": self._sum_ybase.reshape(self.tables, -1).copy(),
            "scale": np.array([self._scale]),
        }

    def _fold_scale(self) -> None:
        for arr in (self._count, self._sum_y, self._sum_ybase):
            arr *= self._scale
        self._scale = 1.0

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        shape = (self.tables, 1 << self.bits)
        for name in ("count", "sum_y", "sum_ybase"):
            if name not in arrays:
                raise ValueError(f"error memory state lacks the array {name!r}")
            if tuple(np.shape(arrays[name])) != shape:
                raise ValueError(
                    f"error memory array {name!r} has shape {tuple(np.shape(arrays[name]))}, this memory "
                    f"has tables={self.tables}, bits={self.bits} ({shape})"
                )
        self._count = np.array(arrays["count"], dtype=np.float64).ravel()
        self._sum_y = np.array(arrays["sum_y"], dtype=np.float64).ravel()
        self._sum_ybase = np.array(arrays["sum_ybase"], dtype=np.float64).ravel()
        # states of format 1 held the true sums and no scale
        self._scale = float(np.asarray(arrays.get("scale", [1.0]), dtype=np.float64).ravel()[0])
        if not (np.isfinite(self._scale) and 0.0 < self._scale <= 1.0):
            raise ValueError(f"error memory array 'scale' must be in (0, 1], got {self._scale!r}")
        self._empty = not self._count.any()
