"""The open exposures: their event rows and join state, columnar and bounded (docs/delayed_feedback.md).

Slots are appended in arrival order and never reused; a closed slot stays until the next
compaction, which keeps the live slots in order and renumbers them. Keys are found through a
sorted index (numpy ``searchsorted``, merged with each batch's new keys by ``np.insert``), so that
no step of the join runs Python per event. The key of a slot is a
stable 64-bit hash (:mod:`pipeline.hashing`) of ``(request_id, item_id)``; at a million open
exposures the chance of any collision is below 3e-8.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.events import EventBatch
from pipeline.events.schema import EVENT_SCHEMA

__all__ = ["ALIVE", "CLOSED", "EMITTED", "LEARNED", "NO_TS", "ExposureStore"]

ALIVE = np.uint8(1)  # open: outcomes may still be attributed
LEARNED = np.uint8(2)  # has had an effect on the model (for freshness)
EMITTED = np.uint8(4)  # its (possibly provisional) example has been learned; only a late positive remains
NO_TS = np.iinfo(np.int64).max
CLOSED = -2  # lookup: the key's exposure has closed

_FIELDS = {
    "key": np.uint64,
    "ts": np.int64,
    "label": np.float64,
    "n_out": np.int32,
    "first_ts": np.int64,
    "flags": np.uint8,
}


class ExposureStore:
    """Open exposures: ``rows`` (their events) aligned with per-slot arrays and learner predictions."""

    def __init__(self, learners: Sequence[str]):
        self.learners = list(learners)
        self.size = 0
        self.live = 0
        self._index_keys = np.zeros(0, np.uint64)  # sorted; a closed slot's entry stays until compaction
        self._index_slots = np.zeros(0, np.int64)
        self._chunks: list[pa.RecordBatch] = []
        self._starts = np.zeros(1, np.int64)  # first slot of each chunk (and the end), cached
        self._bytes = 0
        self.arrays = {name: np.zeros(0, dtype=dt) for name, dt in _FIELDS.items()}
        self.preds = np.zeros((0, len(self.learners)), dtype=np.float64)

    # -- growth ---------------------------------------------------------------------------------
    def append(self, events: EventBatch, keys: np.ndarray) -> np.ndarray:
        """Open one slot per event (keys must not be open already); returns the slots."""
        m = len(events)
        start = self.size
        need = start + m
        if need > len(self.arrays["key"]):
            cap = max(need, 2 * len(self.arrays["key"]), 1024)
            for name, arr in self.arrays.items():
                grown = np.zeros(cap, dtype=arr.dtype)
                grown[:start] = arr[:start]
                self.arrays[name] = grown
            preds = np.full((cap, len(self.learners)), np.nan)
            preds[:start] = self.preds[:start]
            self.preds = preds
        a = self.arrays
        sl = slice(start, need)
        a["key"][sl] = keys
        a["ts"][sl] = events.ts
        a["label"][sl] = 0.0
        a["n_out"][sl] = 0
        a["first_ts"][sl] = NO_TS
        a["flags"][sl] = ALIVE
        self.preds[sl] = np.nan
        self._chunks.append(events.table)
        if len(self._starts) == len(self._chunks):  # the cache was current: extend it
            self._starts = np.append(self._starts, self._starts[-1] + events.table.num_rows)
        self._bytes += events.table.nbytes
        slots = np.arange(start, need, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        at = np.searchsorted(self._index_keys, keys[order], side="right")  # after an older, closed twin
        self._index_keys = np.insert(self._index_keys, at, keys[order])
        self._index_slots = np.insert(self._index_slots, at, slots[order])
        self.size = need
        self.live += m
        return slots

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The open slot of each key; :data:`CLOSED` where its exposure has closed since the last
        compaction (closed keys are remembered that long: at least as many as are open, or 10,000),
        -1 where none is known."""
        if not len(self._index_keys) or not len(keys):
            return np.full(len(keys), -1, np.int64)
        # the rightmost entry of a key is its newest slot: the open one, if any is
        at = np.searchsorted(self._index_keys, keys, side="right") - 1
        safe = np.maximum(at, 0)
        slots = self._index_slots[safe]
        known = (at >= 0) & (self._index_keys[safe] == keys)
        alive = known & (slots >= 0)
        alive[alive] = (self.arrays["flags"][slots[alive]] & ALIVE) > 0
        return np.where(alive, slots, np.where(known, CLOSED, -1))

    def close(self, slots: np.ndarray) -> None:
        """Close open slots (their rows stay readable until :meth:`compact`)."""
        if not len(slots):
            return
        self.arrays["flags"][slots] &= ~ALIVE
        self.live -= len(slots)

    # -- reading --------------------------------------------------------------------------------
    def events(self, slots: np.ndarray, labels: np.ndarray | None = None, lazy: bool = False) -> EventBatch:
        """The stored events of ``slots`` (in that order), with ``labels`` in place of theirs.

        ``lazy``: a :class:`StoredEvents` that takes each column only when it is read (closed
        exposures go to observers that mostly read their times and labels)."""
        if not len(slots):
            return EventBatch.empty()
        stored = StoredEvents(
            _Rows(self._chunks, self._chunk_starts(), np.asarray(slots, dtype=np.int64)), labels
        )
        return stored if lazy else EventBatch(stored.table)

    def _chunk_starts(self) -> np.ndarray:
        if len(self._starts) != len(self._chunks) + 1:
            self._starts = np.cumsum([0] + [c.num_rows for c in self._chunks])
        return self._starts

    def open_slots(self) -> np.ndarray:
        return np.flatnonzero(self.arrays["flags"][: self.size] & ALIVE)

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held (closed ones until the next compaction) and the slot arrays."""
        per_slot = sum(a.dtype.itemsize for a in self.arrays.values()) + 8 * len(self.learners)
        return self._bytes + per_slot * self.size

    # -- compaction and state -------------------------------------------------------------------
    def compact(self, force: bool = False) -> None:
        """Drop closed slots once they are at least half of the store (or when ``force``)."""
        dead = self.size - self.live
        if not dead or (not force and dead < max(10_000, self.live)):
            return
        keep = self.open_slots()
        for name, arr in self.arrays.items():
            self.arrays[name] = arr[keep].copy()
        self.preds = self.preds[keep].copy()
        self._chunks = self._kept_chunks(keep)
        self._starts = np.zeros(0, np.int64)
        self._bytes = sum(c.nbytes for c in self._chunks)
        self.size = self.live = len(keep)
        self._reindex()

    def _kept_chunks(self, keep: np.ndarray) -> list[pa.RecordBatch]:
        """The rows of ``keep`` (ascending), chunk by chunk: exposures close roughly in arrival
        order, so most chunks are dropped or kept whole and only the few in between are copied."""
        chunks = self._chunks
        parts = _Rows(chunks, self._chunk_starts(), keep).parts
        return [chunks[c] if len(at) == chunks[c].num_rows else chunks[c].take(at) for c, at in parts]

    def state(self) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """The live rows and arrays (compacted first, so that a restore renumbers nothing)."""
        remembered = self._index_keys[self._closed_entries()]
        self.compact(force=True)
        rows = pa.Table.from_batches(self._chunks, schema=EVENT_SCHEMA)
        arrays = {f"open.{name}": arr[: self.size].copy() for name, arr in self.arrays.items()}
        arrays["closed_keys"] = remembered
        self._remember(remembered)
        arrays["open.preds"] = self.preds[: self.size].copy()
        return rows, arrays

    def load_state(self, rows: pa.Table, arrays: dict[str, np.ndarray]) -> None:
        n = rows.num_rows
        for name, dt in _FIELDS.items():
            arr = np.asarray(arrays[f"open.{name}"], dtype=dt)
            if len(arr) != n:
                raise ValueError(f"join state: open.{name} has {len(arr)} entries for {n} rows")
            self.arrays[name] = arr.copy()
        preds = np.asarray(arrays["open.preds"], dtype=np.float64)
        if preds.size != n * len(self.learners):
            raise ValueError(
                f"join state holds {preds.size} predictions for {n} exposures of {len(self.learners)} learners"
            )
        preds = preds.reshape(n, len(self.learners))  # (-1 cannot be inferred when nothing is open)
        self.preds = preds.copy()
        self._chunks = rows.combine_chunks().to_batches() if n else []
        self._starts = np.zeros(0, np.int64)
        self._bytes = sum(b.nbytes for b in self._chunks)
        self.size = self.live = n
        self._reindex()
        self._remember(np.asarray(arrays.get("closed_keys", np.zeros(0, np.uint64)), np.uint64))

    def _closed_entries(self) -> np.ndarray:
        slots = self._index_slots
        closed = slots < 0
        closed[~closed] = (self.arrays["flags"][slots[~closed]] & ALIVE) == 0
        return np.flatnonzero(closed)

    def _remember(self, keys: np.ndarray) -> None:
        """Index ``keys`` as closed (a snapshot compacts the store but keeps what it knew)."""
        if not len(keys):
            return
        keys = np.sort(keys)
        at = np.searchsorted(self._index_keys, keys, side="left")  # before any open twin
        self._index_keys = np.insert(self._index_keys, at, keys)
        self._index_slots = np.insert(self._index_slots, at, np.full(len(keys), -1, np.int64))

    def _reindex(self) -> None:
        keys = self.arrays["key"][: self.size]
        order = np.argsort(keys, kind="stable")
        self._index_keys, self._index_slots = keys[order].copy(), order.astype(np.int64)


class _Rows:
    """Some slots' rows in a store's chunks as they are now (chunks are never changed in place,
    so a compaction after this leaves them readable)."""

    def __init__(self, chunks: list[pa.RecordBatch], starts: np.ndarray, slots: np.ndarray):
        self.chunks = list(chunks)
        self.order = None
        if len(slots) > 1 and (np.diff(slots) < 0).any():
            self.order = np.argsort(slots, kind="stable")
            slots = slots[self.order]
        cut = np.searchsorted(slots, starts)
        # chunk by chunk: a take over the whole chunked table would concatenate every chunk first
        self.parts = [
            (c, pa.array(slots[cut[c] : cut[c + 1]] - starts[c]))
            for c in np.flatnonzero(np.diff(cut)).tolist()
        ]

    def _inverse(self) -> pa.Array:
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order))
        return pa.array(inverse)

    def batch(self) -> pa.RecordBatch:
        parts = [self.chunks[c].take(at) for c, at in self.parts]
        batch = parts[0] if len(parts) == 1 else pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
        return batch if self.order is None else batch.take(self._inverse())

    def column(self, i: int) -> pa.Array:
        parts = [self.chunks[c].column(i).take(at) for c, at in self.parts]
        col = parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
        return col if self.order is None else col.take(self._inverse())


class StoredEvents(EventBatch):
    """Stored events whose columns are taken from the store's chunks one by one, when first read.

    The whole batch (``table``) is taken only when something asks for it; labels may replace the
    stored ones, as in :meth:`ExposureStore.events`.
    """

    __slots__ = ("_labels", "_n", "_rows", "_taken", "_whole")

    def __init__(self, rows: _Rows, labels: np.ndarray | None = None):
        self._rows, self._cache, self._taken, self._whole = rows, {}, {}, None
        self._labels = None if labels is None else pa.array(labels, pa.float64())
        self._n = sum(len(at) for _, at in rows.parts)

    @property
    def table(self) -> pa.RecordBatch:  # type: ignore[override]
        if self._whole is None:
            batch = self._rows.batch()
            if self._labels is not None:
                i = EVENT_SCHEMA.get_field_index("label")
                batch = batch.set_column(i, EVENT_SCHEMA.field("label"), self._labels)
            self._whole = batch
        return self._whole

    def __len__(self) -> int:
        return self._n

    def column(self, name: str) -> pa.Array:
        if self._whole is not None:
            return self._whole.column(name)
        if name == "label" and self._labels is not None:
            return self._labels
        if name not in self._taken:
            self._taken[name] = self._rows.column(EVENT_SCHEMA.get_field_index(name))
        return self._taken[name]
