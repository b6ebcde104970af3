"""From a :class:`~pipeline.features.FeatureBatch` to the ranker's hashed inputs, and on to embedding rows.

A :class:`HashedBatch` holds what the ranker needs of each event as plain arrays — the user and item
hashes, one uint64 key per categorical field slot (``combine(hash(name), hash(value))``, exactly the
featuriser's key; 0 where absent) and the numeric features in their slots (``sign(x) log1p|x|``,
0 where absent). It is independent of the vocabularies, so the replay buffer stores it and
re-resolves rows at replay time (rows are reused after eviction; hashes are forever).

Field slots are assigned in order of first appearance, up to ``max_fields`` / ``max_dense``;
features excluded by the featuriser's spec (absent from ``FeatureBatch.keys``) are left out.

Examples
--------
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.features import Featurizer
>>> events, _ = decode_json([b'{"event_id":"e","ts":1,"user_id":"u","item_id":"i","label":1,'
...                          b'"features":{"device":"ios","price":2.5}}'], EventRules())
>>> slots = FieldSlots(max_fields=2, max_dense=2)
>>> hb = hash_batch(Featurizer().transform(events), slots, grow=True)
>>> slots.cat_names, slots.dense_names, hb.cat.shape, hb.dense.astype(float).round(3).tolist()
(['device'], ['price'], (1, 2), [[1.253, 0.0]])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.features import FeatureBatch
from pipeline.hashing import combine, hash_strings

__all__ = ["FieldSlots", "HashedBatch", "hash_batch", "signed_log1p"]


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) log1p(|x|)`` with NaN -> 0: a scale-free squashing that needs no running statistics."""
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass(frozen=True)
class HashedBatch:
    """Per-event model inputs before vocabulary lookup (see the module docstring)."""

    user: np.ndarray
    item: np.ndarray
    cat: np.ndarray
    dense: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> HashedBatch:
        return HashedBatch(self.user[index], self.item[index], self.cat[index], self.dense[index])

    @staticmethod
    def concat(parts: list[HashedBatch]) -> HashedBatch:
        return HashedBatch(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("user", "item", "cat", "dense"))
        )


class FieldSlots:
    """Which categorical / numeric feature names feed which input slot of the ranker."""

    def __init__(self, max_fields: int, max_dense: int):
        self.max_fields = max_fields
        self.max_dense = max_dense
        self.cat_names: list[str] = []
        self.dense_names: list[str] = []
        self._cat_hashes = np.zeros(0, np.uint64)

    def cat_slots(
        self, name_hashes: np.ndarray, name_of: Callable[[np.uint64], str], grow: bool
    ) -> np.ndarray:
        """Slot of every categorical entry (-1: no slot); with ``grow`` new names take free slots,
        in order of first appearance (``name_of`` gives a new name's string from its hash)."""
        if grow and len(self.cat_names) < self.max_fields and len(name_hashes):
            uniq, first = np.unique(name_hashes, return_index=True)
            new = ~np.isin(uniq, self._cat_hashes)
            for i in np.sort(first[new])[: self.max_fields - len(self.cat_names)].tolist():
                self.cat_names.append(name_of(name_hashes[i]))
                self._cat_hashes = np.append(self._cat_hashes, name_hashes[i])
        slots = np.full(len(name_hashes), -1, np.int64)
        for s, h in enumerate(self._cat_hashes.tolist()):  # at most max_fields passes
            slots[name_hashes == np.uint64(h)] = s
        return slots

    def dense_slots(self, names: list[str], grow: bool) -> dict[str, int]:
        if grow:
            for name in names:
                if name not in self.dense_names and len(self.dense_names) < self.max_dense:
                    self.dense_names.append(name)
        return {n: i for i, n in enumerate(self.dense_names) if n in names}

    def to_json(self) -> dict:
        return {"cat": list(self.cat_names), "dense": list(self.dense_names)}

    def load_json(self, data: dict) -> None:
        cat, dense = list(data["cat"]), list(data["dense"])
        if len(cat) > self.max_fields or len(dense) > self.max_dense:
            raise ValueError(
                f"{len(cat)} categorical / {len(dense)} numeric fields do not fit "
                f"max_fields={self.max_fields} / max_dense={self.max_dense}"
            )
        self.cat_names, self.dense_names = cat, dense
        self._cat_hashes = (
            hash_strings(pa.array(cat, pa.string()), "feature") if cat else np.zeros(0, np.uint64)
        )


def _map_entries(col: pa.MapArray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """(row of each entry, keys, values) of a map column, respecting any slice offset."""
    offsets = np.asarray(col.offsets, dtype=np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    rows = np.repeat(np.arange(len(col), dtype=np.int64), np.diff(offsets))
    return rows, col.keys.slice(lo, hi - lo), col.items.slice(lo, hi - lo)


def _categorical_entries(batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, name hashes, keys)`` of the categorical entries the featurizer kept: the batch's
    own record of them, without reading its events (serving defers those); for a batch made
    without it, the events' map entries that the featurizer did not exclude."""
    if batch.categorical is not None:
        return batch.categorical
    rows, names, values = _map_entries(batch.events.column("cat_features"))
    name_h = hash_strings(names, "feature")
    keys = combine(name_h, hash_strings(values, "value"))
    keep = np.isin(keys, batch.keys)  # the featuriser dropped excluded features
    return rows[keep], name_h[keep], keys[keep]


def _name_of(batch: FeatureBatch, name_hash: np.uint64) -> str:
    """The categorical feature name with this hash, read from the batch's events (new names only)."""
    names = batch.events.column("cat_features").keys
    return str(names[int(np.flatnonzero(hash_strings(names, "feature") == name_hash)[0])].as_py())


def hash_batch(batch: FeatureBatch, slots: FieldSlots, grow: bool) -> HashedBatch:
    """The :class:`HashedBatch` of ``batch``; ``grow`` lets unseen feature names take free slots."""
    n = len(batch)
    cat = np.zeros((n, slots.max_fields), np.uint64)
    if slots.max_fields:
        rows, name_h, keys = _categorical_entries(batch)
        if len(rows):
            slot = slots.cat_slots(name_h, lambda h: _name_of(batch, h), grow)
            ok = slot >= 0
            cat[rows[ok], slot[ok]] = keys[ok]
    dense = np.zeros((n, slots.max_dense), np.float32)
    for name, s in slots.dense_slots(sorted(batch.numeric), grow).items():
        dense[:, s] = signed_log1p(batch.numeric[name])
    return HashedBatch(
        np.asarray(batch.user_hash, np.uint64).copy(),
        np.asarray(batch.item_hash, np.uint64).copy(),
        cat,
        dense,
    )
