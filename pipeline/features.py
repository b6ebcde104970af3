"""Featurisation (docs/design.md §4): stable hashing of ids and categorical features, numeric features.

An :class:`EventBatch` becomes a :class:`FeatureBatch`: a CSR matrix of hashed feature keys
(uint64, see :mod:`pipeline.hashing`) and values, plus the id hashes and columns that learners
need. Every row holds a bias feature, ``user_id``, ``item_id``, each categorical feature as
``name=value`` (value 1), each numeric feature under its name (value x, optionally standardised
online), and the configured crosses. Learners map keys into their own table size with
``keys & (2**bits - 1)``.

Examples
--------
>>> from pipeline.events import decode_json, EventRules
>>> events, _ = decode_json([b'{"event_id":"e","ts":1,"user_id":"u","item_id":"i","label":1,'
...                          b'"features":{"device":"ios","price":2.5}}'], EventRules())
>>> fz = Featurizer(FeatureSpec())
>>> fb = fz.transform(events)
>>> fb.indptr.tolist(), fb.values.tolist()
([0, 5], [1.0, 1.0, 1.0, 1.0, 2.5])
>>> fz.update(fb)  # learning is a separate step: transform alone never changes the statistics
>>> fz.state().column("count").to_pylist()
[1.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.events import EventBatch
from pipeline.events.schema import ChainedEvents
from pipeline.hashing import combine, hash_one, hash_repeated_strings, hash_strings

__all__ = [
    "BIAS_KEY",
    "FeatureBatch",
    "FeatureSpec",
    "Featurizer",
    "concat_features",
    "feature_bytes",
    "stack_features",
    "take_features",
    "take_features_parts",
]

BIAS_KEY = np.uint64(hash_one("bias", namespace="__bias__"))


@dataclass(frozen=True)
class FeatureSpec:
    """How events become features.

    Parameters
    ----------
    crosses
        Pairs of field names to cross, e.g. ``(("user_id", "device"),)``; a field is ``user_id``,
        ``item_id``, ``event_type``, ``position`` or a categorical feature's name.
    standardize
        Standardise numeric features with running mean and variance (Welford, per name).
    exclude
        Feature names to ignore (e.g. ones that leak the label).
    """

    crosses: tuple[tuple[str, str], ...] = ()
    standardize: bool = True
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureBatch:
    """Features of a micro-batch, row-aligned with ``events``.

    ``keys[indptr[r]:indptr[r+1]]`` and ``values[...]`` are row r's hashed features.
    ``categorical`` keeps ``(rows, name_hashes, keys)`` of the categorical features, one entry
    per (event, feature), so that consumers can pick one feature's keys without re-hashing strings.
    ``weights`` (float64, one per row, finite and >= 0; None: every weight is 1) multiply each
    example's loss term when a learner learns the batch: 0 leaves the example out, an integer k
    counts it k times where a model is a sum of statistics (docs/architecture.md, "Example
    weights"). The featuriser never sets them; callers do, with
    ``dataclasses.replace(batch, weights=w)``, and learners check them
    (:func:`pipeline.learners.checks.example_weights`).
    """

    events: EventBatch
    indptr: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    user_hash: np.ndarray
    item_hash: np.ndarray
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.events)

    @property
    def labels(self) -> np.ndarray:
        return self.events.label

    @property
    def sample_weights(self) -> np.ndarray:
        """The example weights, ones where none are set (unchecked: see ``weights``)."""
        return np.ones(len(self)) if self.weights is None else self.weights

    @property
    def row_of_nnz(self) -> np.ndarray:
        """Row index of every stored feature (length ``nnz``)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))

    def slots(self, bits: int) -> np.ndarray:
        """Feature keys folded into a table of ``2**bits`` slots (int64)."""
        return (self.keys & np.uint64((1 << bits) - 1)).astype(np.int64)


def concat_features(a: FeatureBatch, b: FeatureBatch) -> FeatureBatch:
    """The rows of ``a`` then those of ``b``: what one :meth:`Featurizer.transform` of both batches'
    events would give under the same statistics (tested), without featurising either again.

    The events are chained (:class:`~pipeline.events.schema.ChainedEvents`): their rows are
    copied only if something reads the whole table."""
    if not len(b):
        return a
    if not len(a):
        return b
    return stack_features([a, b], ChainedEvents([a.events, b.events]))


def stack_features(batches: Sequence[FeatureBatch], events: EventBatch) -> FeatureBatch:
    """The rows of ``batches`` one after the other, row-aligned with ``events`` (the caller's).

    Only the batches' arrays are read (their rows are counted by ``indptr``), never their events."""
    if len(batches) == 1:
        return dataclasses.replace(batches[0], events=events)
    sizes = [len(b.indptr) - 1 for b in batches]
    offsets = np.cumsum([0, *sizes])
    nnz = np.cumsum([0, *(int(b.indptr[-1]) for b in batches)])
    names = sorted(set().union(*(b.numeric for b in batches)))
    numeric = {
        name: np.concatenate([b.numeric.get(name, np.full(n, np.nan)) for b, n in zip(batches, sizes)])
        for name in names
    }
    categorical = None
    if any(b.categorical is not None for b in batches):
        empty = (np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        cats = [b.categorical or empty for b in batches]
        categorical = (
            np.concatenate([c[0] + off for c, off in zip(cats, offsets)]),
            np.concatenate([c[1] for c in cats]),
            np.concatenate([c[2] for c in cats]),
        )
    weights = None
    if any(b.weights is not None for b in batches):
        weights = np.concatenate(
            [np.ones(n) if b.weights is None else b.weights for b, n in zip(batches, sizes)]
        )
    return FeatureBatch(
        events=events,
        indptr=np.concatenate([[0]] + [b.indptr[1:] + at for b, at in zip(batches, nnz)]).astype(np.int64),
        keys=np.concatenate([b.keys for b in batches]),
        values=np.concatenate([b.values for b in batches]),
        user_hash=np.concatenate([b.user_hash for b in batches]),
        item_hash=np.concatenate([b.item_hash for b in batches]),
        numeric=numeric,
        categorical=categorical,
        weights=weights,
    )


def take_features(batch: FeatureBatch, rows: np.ndarray, events: EventBatch | None = None) -> FeatureBatch:
    """Rows ``rows`` (in that order, repeats allowed) of ``batch``: what :meth:`Featurizer.transform` of
    those events would give under the same statistics (tested), without hashing anything again.

    ``events`` are the taken rows' events when the caller has them (default: taken from ``batch``).
    Numeric features that none of the rows has are left out, as ``transform`` leaves them out.
    """
    rows = np.asarray(rows, dtype=np.int64)
    return take_features_parts([(batch, rows)], batch.events.take(rows) if events is None else events)


def take_features_parts(parts: Sequence[tuple[FeatureBatch, np.ndarray]], events: EventBatch) -> FeatureBatch:
    """The rows of several batches, one after the other: equal to :func:`stack_features` of each
    ``take_features(batch, rows)`` (tested), in one pass that builds no batch per part.

    The exposure store reads a batch's late positives from several of its chunks this way; a take
    and a stack cost a few dozen numpy calls per part, more than the rows themselves."""
    names = sorted(set().union(*(b.numeric for b, _ in parts)))
    counts, keys, values, users, items, weights = [], [], [], [], [], []
    numeric: dict[str, list[np.ndarray]] = {name: [] for name in names}
    cat_rows, cat_names, cat_keys = [], [], []
    has_cat = any(b.categorical is not None for b, _ in parts)
    has_weights = any(b.weights is not None for b, _ in parts)
    n = 0
    for b, rows in parts:
        rows = np.asarray(rows, dtype=np.int64)
        starts = b.indptr[rows]
        count = b.indptr[rows + 1] - starts
        counts.append(count)
        at = _ranges(starts, count)
        keys.append(b.keys[at])
        values.append(b.values[at])
        users.append(b.user_hash[rows])
        items.append(b.item_hash[rows])
        for name in names:
            dense = b.numeric.get(name)
            numeric[name].append(np.full(len(rows), np.nan) if dense is None else dense[rows])
        if has_weights:
            weights.append(np.ones(len(rows)) if b.weights is None else b.weights[rows])
        if b.categorical is not None:
            c_rows, c_names, c_keys = b.categorical  # rows ascending, as transform makes them
            # each taken row's run of entries, found by binary search (no pass over the whole batch)
            first = np.searchsorted(c_rows, rows, side="left")
            run = np.searchsorted(c_rows, rows, side="right") - first
            sel = _ranges(first, run)
            cat_rows.append(np.repeat(np.arange(n, n + len(rows), dtype=np.int64), run))
            cat_names.append(c_names[sel])
            cat_keys.append(c_keys[sel])
        n += len(rows)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(_joined(counts), out=indptr[1:])
    dense = {name: _joined(v) for name, v in numeric.items()}
    return FeatureBatch(
        events=events,
        indptr=indptr,
        keys=_joined(keys),
        values=_joined(values),
        user_hash=_joined(users),
        item_hash=_joined(items),
        numeric={name: v for name, v in dense.items() if not np.isnan(v).all()},
        categorical=(_joined(cat_rows), _joined(cat_names), _joined(cat_keys)) if has_cat else None,
        weights=_joined(weights) if has_weights else None,
    )


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays one after the other (one of them as it is: a single part is not copied again)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions of the entry ranges ``starts[i] : starts[i] + counts[i]``, one after the other."""
    ends = np.cumsum(counts)
    return np.repeat(starts - (ends - counts), counts) + np.arange(
        int(ends[-1]) if len(ends) else 0, dtype=np.int64
    )


def feature_bytes(batch: FeatureBatch) -> int:
    """Bytes of ``batch``'s arrays (not its events)."""
    n = batch.indptr.nbytes + batch.keys.nbytes + batch.values.nbytes
    n += batch.user_hash.nbytes + batch.item_hash.nbytes + sum(v.nbytes for v in batch.numeric.values())
    if batch.categorical is not None:
        n += sum(a.nbytes for a in batch.categorical)
    return n


_NUMERIC_KEYS: dict[str, np.uint64] = {}


def _numeric_key(name: str) -> np.uint64:
    """The feature key of a numeric feature (its name's hash), cached: names are few."""
    key = _NUMERIC_KEYS.get(name)
    if key is None:
        key = np.uint64(hash_one(name, "numeric"))
        if len(_NUMERIC_KEYS) < 10_000:  # names come from the stream: never grow without bound
            _NUMERIC_KEYS[name] = key
    return key


class _Welford:
    """Running mean/variance per numeric feature name, updated a batch at a time."""

    def __init__(self):
        self.stats: dict[str, list[float]] = {}  # name -> [count, mean, M2]

    def update(self, name: str, x: np.ndarray) -> None:
        c, m, m2 = self.stats.get(name, (0.0, 0.0, 0.0))
        nb = float(len(x))
        if nb == 0:
            return
        mb = float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        tot = c + nb
        delta = mb - m
        self.stats[name] = [tot, m + delta * nb / tot, m2 + m2b + delta * delta * c * nb / tot]

    def scale(self, name: str, x: np.ndarray) -> np.ndarray:
        c, m, m2 = self.stats.get(name, (0.0, 0.0, 0.0))
        if c < 2:
            return x - m
        sd = (m2 / (c - 1)) ** 0.5
        return (x - m) / sd if sd > 0 else x - m


class Featurizer:
    """Turns events into hashed sparse features; its only state is the numeric standardisation.

    :meth:`transform` is pure: it standardises with the statistics as they are and changes
    nothing, so scoring a request never moves the model. :meth:`update` absorbs a transformed
    batch into the statistics. The runner calls ``transform`` then ``update`` on every batch, so a
    batch is standardised with the statistics from *before* it (prequential).
    """

    def __init__(self, spec: FeatureSpec | None = None):
        self.spec = spec or FeatureSpec()
        self._welford = _Welford()

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> pa.Table:
        names = sorted(self._welford.stats)
        st = [self._welford.stats[n] for n in names]
        return pa.table(
            {
                "name": pa.array(names, pa.string()),
                "count": pa.array([s[0] for s in st], pa.float64()),
                "mean": pa.array([s[1] for s in st], pa.float64()),
                "m2": pa.array([s[2] for s in st], pa.float64()),
            }
        )

    def load_state(self, table: pa.Table) -> None:
        d = table.to_pydict()
        self._welford.stats = {
            n: [c, m, m2] for n, c, m, m2 in zip(d["name"], d["count"], d["mean"], d["m2"])
        }

    # -- learning -------------------------------------------------------------------------------------
    def update(self, batch: FeatureBatch) -> None:
        """Absorb the numeric features of ``batch`` (made by :meth:`transform`) into the statistics."""
        if not self.spec.standardize:
            return
        for name in sorted(batch.numeric):
            dense = batch.numeric[name]
            self._welford.update(name, dense[~np.isnan(dense)])

    def transform_and_update(self, events: EventBatch) -> FeatureBatch:
        """:meth:`transform`, then :meth:`update` with the result (one prequential step)."""
        batch = self.transform(events)
        self.update(batch)
        return batch

    def restandardized(self, batch: FeatureBatch) -> FeatureBatch:
        """``batch`` with its numeric values standardised under the statistics as they are now.

        Equal to :meth:`transform` of ``batch.events`` now (tested) when ``batch`` came from
        ``transform`` of the same events (at any earlier time, or as :func:`take_features` of such a
        batch): only the numeric values depend on the statistics, and their raw values are kept
        in ``batch.numeric``. So stored features can be learned later without hashing again.
        """
        if not self.spec.standardize or not batch.numeric:
            return batch
        values = batch.values.copy()
        row_of = batch.row_of_nnz
        for name, dense in batch.numeric.items():
            sel = np.flatnonzero(batch.keys == _numeric_key(name))
            values[sel] = self._numeric_values(name, dense[row_of[sel]])
        return dataclasses.replace(batch, values=values)

    def _numeric_values(self, name: str, x: np.ndarray) -> np.ndarray:
        """The feature values of numeric feature ``name``'s raw values ``x``, under the statistics now."""
        scaled = self._welford.scale(name, x) if self.spec.standardize else x
        return np.clip(scaled, -1e6, 1e6).astype(np.float32)

    # -- transform --------------------------------------------------------------------------------
    def transform(self, events: EventBatch) -> FeatureBatch:
        """Features of ``events`` under the current statistics; changes no state."""
        user = hash_strings(events.column("user_id"), "user_id")
        item = hash_strings(events.column("item_id"), "item_id")
        return self.assemble(events, user, item, self._categorical(events), self._numeric_entries(events))

    def assemble(
        self,
        events: EventBatch,
        user: np.ndarray,
        item: np.ndarray,
        categorical: tuple[np.ndarray, np.ndarray, np.ndarray],
        numeric: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> FeatureBatch:
        """The :class:`FeatureBatch` of ``events`` from their hashed parts (what :meth:`transform` does
        after hashing): for callers that hash the parts themselves, such as the serving requests,
        whose candidates share one context (:mod:`pipeline.serving.request_features`).

        Parameters
        ----------
        user, item
            Each row's id hashes.
        categorical
            ``(rows, name_hashes, keys)`` of every categorical entry not excluded, row-major, each
            row's entries in its map's order.
        numeric
            Feature name (not excluded) -> ``(rows, raw values)`` of its entries, rows ascending.

        ``events`` are read only for crosses of ``event_type``, ``request_id`` or ``position``.
        """
        n = len(user)
        cat_rows, cat_names, cat_keys = categorical
        rows = np.arange(n, dtype=np.int64)
        ones = np.ones(n, dtype=np.float32)
        parts_rows = [rows, rows, rows, cat_rows]
        parts_keys = [np.full(n, BIAS_KEY, dtype=np.uint64), user, item, cat_keys]
        parts_vals = [ones, ones, ones, np.ones(len(cat_rows), np.float32)]
        dense: dict[str, np.ndarray] = {}
        for name in sorted(numeric):
            at, x = numeric[name]
            column = np.full(n, np.nan)
            column[at] = x
            dense[name] = column
            parts_rows.append(at)
            parts_keys.append(np.full(len(at), _numeric_key(name), np.uint64))
            parts_vals.append(self._numeric_values(name, x))
        for a, b in self.spec.crosses:
            r, k = self._cross(events, a, b, user, item, cat_rows, cat_names, cat_keys)
            parts_rows.append(r)
            parts_keys.append(k)
            parts_vals.append(np.ones(len(r), np.float32))
        all_rows = np.concatenate(parts_rows)
        order = np.argsort(all_rows, kind="stable")
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(all_rows, minlength=n), out=indptr[1:])
        return FeatureBatch(
            events=events,
            indptr=indptr,
            keys=np.concatenate(parts_keys)[order],
            values=np.concatenate(parts_vals)[order],
            user_hash=user,
            item_hash=item,
            numeric=dense,
            categorical=categorical,
        )

    def _categorical(self, events: EventBatch):
        col = events.column("cat_features")
        offsets = np.asarray(col.offsets, dtype=np.int64)
        rows = np.repeat(np.arange(len(events), dtype=np.int64), np.diff(offsets))
        names = col.keys
        values = col.items
        if self.spec.exclude and len(names):
            import pyarrow.compute as pc

            keep = np.asarray(pc.invert(pc.is_in(names, value_set=pa.array(list(self.spec.exclude)))))
            rows, names, values = rows[keep], names.filter(pa.array(keep)), values.filter(pa.array(keep))
        name_h = hash_repeated_strings(names, "feature")
        # the value hash is namespaced by the feature name: combine(name, value)
        keys = combine(name_h, hash_repeated_strings(values, "value"))
        return rows, name_h, keys

    def _numeric_entries(self, events: EventBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Name -> (rows, raw values) of the numeric entries of ``events`` (excluded names left out)."""
        col = events.column("num_features")
        if len(col.keys) == 0:
            return {}
        import pyarrow.compute as pc

        offsets = np.asarray(col.offsets, dtype=np.int64)
        rows = np.repeat(np.arange(len(events), dtype=np.int64), np.diff(offsets))
        encoded = pc.dictionary_encode(col.keys)  # a few names over every event: compare small ints
        codes = np.asarray(encoded.indices)
        vals = col.items.to_numpy(zero_copy_only=False).astype(np.float64)
        out = {}
        for code, name in enumerate(encoded.dictionary.to_pylist()):
            if name not in self.spec.exclude:
                sel = codes == code
                out[name] = (rows[sel], vals[sel])
        return out

    def _field_hash(self, events, name, user, item, cat_rows, cat_names, cat_keys):
        """(rows, hashes) of a single-valued field, for crosses."""
        n = len(events)
        if name == "user_id":
            return np.arange(n), user
        if name == "item_id":
            return np.arange(n), item
        if name in ("event_type", "request_id"):
            col = events.column(name)
            valid = np.asarray(col.is_valid())
            return np.flatnonzero(valid), hash_strings(col, name)[valid]
        if name == "position":
            valid = events.position >= 0
            return np.flatnonzero(valid), events.position[valid].astype(np.uint64)
        sel = cat_names == np.uint64(hash_one(name, "feature"))
        return cat_rows[sel], cat_keys[sel]

    def _cross(self, events, a, b, user, item, cat_rows, cat_names, cat_keys):
        ra, ha = self._field_hash(events, a, user, item, cat_rows, cat_names, cat_keys)
        rb, hb = self._field_hash(events, b, user, item, cat_rows, cat_names, cat_keys)
        n = len(events)
        ma = np.full(n, -1, np.int64)
        ma[ra] = np.arange(len(ra))
        mb = np.full(n, -1, np.int64)
        mb[rb] = np.arange(len(rb))
        both = np.flatnonzero((ma >= 0) & (mb >= 0))
        salt = np.uint64(hash_one(f"{a}\x1f{b}", "cross"))
        return both, combine(combine(np.full(len(both), salt, np.uint64), ha[ma[both]]), hb[mb[both]])
