"""The open exposures: their event rows and join state, columnar and bounded (docs/delayed_feedback.md).

Slots are appended in arrival order and never reused; a closed slot stays until the next
compaction, which keeps the live slots in order and renumbers them. Beside each chunk of rows the
store keeps the chunk's hashed features as the runner featurised them when the exposures came
(:meth:`ExposureStore.attach_features`), so that an exposure learned later (a late positive, a
final label) is not hashed again: its features are taken and standardised under the statistics
of the moment (:meth:`~pipeline.features.Featurizer.restandardized`), which equals featurising
its row then. Features are not part of a snapshot: the chunks of a restored store are featurised
again when read, with the same result. Keys are found through a sorted index (numpy
``searchsorted``; a batch's new keys go into a smaller second level, merged into the first now and
then; a compaction filters it), so that no step of the join runs Python per event. The key of a
slot is a stable 64-bit hash (:mod:`pipeline.hashing`) of ``(request_id, item_id)``; at a million open
exposures the chance of any collision is below 3e-8.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.events import EventBatch
from pipeline.events.schema import EVENT_SCHEMA
from pipeline.features import FeatureBatch, Featurizer, feature_bytes, take_features, take_features_parts

__all__ = ["ALIVE", "CLOSED", "EMITTED", "LEARNED", "NO_TS", "ExposureStore", "StoredEvents", "StoredRows"]

ALIVE = np.uint8(1)  # open: outcomes may still be attributed
LEARNED = np.uint8(2)  # has had an effect on the model (for freshness)
EMITTED = np.uint8(4)  # its (possibly provisional) example has been learned; only a late positive remains
NO_TS = np.iinfo(np.int64).max
NO_TS_MIN = np.iinfo(np.int64).min
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
        self._index = _KeyIndex()  # a closed slot's entry stays until compaction
        self._chunks: list[pa.RecordBatch] = []
        self._features: list[FeatureBatch | None] = []  # each chunk's features (None: not kept)
        self._starts = np.zeros(1, np.int64)  # first slot of each chunk (and the end), cached
        self._mins: np.ndarray | None = np.zeros(0, np.int64)  # each chunk's earliest event time, cached
        self._open_from = 0  # every slot below is closed
        self._bytes = 0
        self.arrays = {name: np.zeros(0, dtype=dt) for name, dt in _FIELDS.items()}
        self.preds = np.zeros((0, len(self.learners)), dtype=np.float64)

    # -- growth ---------------------------------------------------------------------------------
    def open_new(self, events: EventBatch, keys: np.ndarray) -> tuple[np.ndarray, EventBatch]:
        """Open a slot for the first event of each key that is not open already.

        Returns ``(slots, their events)``; the events left out are repeats (``len(events) -
        len(slots)`` of them). One sort and one search of the index serve both the check and
        the insertion.
        """
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        first = np.ones(len(keys), bool)
        first[1:] = ordered[1:] != ordered[:-1]  # stable: a key's first sighting leads its run
        first &= self._open_slot(self._index.newest(ordered)) < 0
        if first.all():
            return self._add(events, keys, ordered, order), events
        keep = np.sort(order[first])
        events = events.take(keep) if len(keep) else EventBatch.empty()
        rank = np.searchsorted(keep, order[first])  # each kept key's place in arrival order
        return self._add(events, keys[keep], ordered[first], rank), events

    def _add(
        self, events: EventBatch, keys: np.ndarray, ordered: np.ndarray, order: np.ndarray
    ) -> np.ndarray:
        """Slots for ``events`` (keys in arrival order), indexed as the sorted keys ``ordered``,
        where ``order[i]`` is the arrival rank of the i-th of them."""
        m = len(events)
        if not m:
            return np.zeros(0, np.int64)
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
        self._features.append(None)
        if len(self._starts) == len(self._chunks):  # the cache was current: extend it
            self._starts = np.append(self._starts, self._starts[-1] + events.table.num_rows)
        if self._mins is not None:
            self._mins = np.append(self._mins, events.ts.min())
        self._bytes += events.table.get_total_buffer_size()  # what the chunk keeps alive
        self._index.add(ordered, start + np.asarray(order, np.int64))
        slots = np.arange(start, need, dtype=np.int64)
        self.size = need
        self.live += m
        return slots

    def attach_features(self, features: FeatureBatch) -> None:
        """Keep the features of the chunk :meth:`open_new` added last: its rows are the first of
        ``features`` (the runner's scored batch: the new exposures, then labelled examples)."""
        n = self._chunks[-1].num_rows if self._chunks else 0
        if not n or len(features) < n:
            raise ValueError("features must begin with the rows of the last opened chunk")
        if len(features) > n:
            features = take_features(features, np.arange(n), EventBatch(self._chunks[-1]))
        self._features[-1] = features
        self._bytes += feature_bytes(features)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The open slot of each key; :data:`CLOSED` where its exposure has closed since the last
        compaction (closed keys are remembered that long: at least as many as are open, or 10,000),
        -1 where none is known."""
        if not len(keys):
            return np.zeros(0, np.int64)
        newest = self._index.newest(keys)  # a key's newest slot: the open one, if any is
        slots = self._open_slot(newest)
        return np.where(slots >= 0, slots, np.where(newest != _ABSENT, CLOSED, -1))

    def _open_slot(self, newest: np.ndarray) -> np.ndarray:
        """``newest`` where that slot is open, else -1."""
        alive = newest >= 0
        alive[alive] = (self.arrays["flags"][newest[alive]] & ALIVE) > 0
        return np.where(alive, newest, -1)

    def close(self, slots: np.ndarray) -> None:
        """Close open slots (their rows stay readable until :meth:`compact`)."""
        if not len(slots):
            return
        flags = self.arrays["flags"]
        flags[slots] &= ~ALIVE
        self.live -= len(slots)
        # exposures close roughly in arrival order: the first open slot is usually near
        i = self._open_from
        while i < self.size:
            alive = np.flatnonzero(flags[i : i + 4096] & ALIVE)
            if len(alive):
                i += int(alive[0])
                break
            i += 4096
        self._open_from = min(i, self.size)

    # -- reading --------------------------------------------------------------------------------
    def rows(self, slots: np.ndarray, labels: np.ndarray | None = None) -> StoredRows:
        """The rows and features of ``slots`` (in that order, with ``labels`` in place of theirs) as
        they are now: a later compaction leaves them readable. Their events are read lazily
        (:class:`StoredEvents`: closed exposures go to observers that mostly read times and labels)."""
        rows = _Rows(self._chunks, self._chunk_starts(), np.asarray(slots, dtype=np.int64))
        return StoredRows(rows, [self._features[c] for c, _ in rows.parts], labels)

    def _chunk_starts(self) -> np.ndarray:
        if len(self._starts) != len(self._chunks) + 1:
            self._starts = np.cumsum([0] + [c.num_rows for c in self._chunks])
        return self._starts

    def open_slots(self) -> np.ndarray:
        return self._open_from + np.flatnonzero(self.arrays["flags"][self._open_from : self.size] & ALIVE)

    def open_before(self, ts: int) -> np.ndarray:
        """The open slots whose event time is before ``ts``, ascending. Only the chunks that begin
        before ``ts`` are read, from the first open slot on: the oldest few, as a rule."""
        ts = max(int(ts), NO_TS_MIN)
        old = np.flatnonzero(self._chunk_mins() < ts)
        if not len(old):
            return np.zeros(0, np.int64)
        lo, hi = self._open_from, int(self._chunk_starts()[old[-1] + 1])
        if hi <= lo:
            return np.zeros(0, np.int64)
        a = self.arrays
        hit = ((a["flags"][lo:hi] & ALIVE) > 0) & (a["ts"][lo:hi] < ts)
        return lo + np.flatnonzero(hit)

    def _chunk_mins(self) -> np.ndarray:
        if self._mins is None or len(self._mins) != len(self._chunks):
            starts = self._chunk_starts()[:-1]
            ts = self.arrays["ts"][: self.size]
            self._mins = np.minimum.reduceat(ts, starts) if len(starts) else np.zeros(0, np.int64)
        return self._mins

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held (closed ones until the next compaction), their features and the slot arrays."""
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
        self._chunks, self._features = self._kept_chunks(keep)
        self._starts = np.zeros(0, np.int64)
        self._mins, self._open_from = None, 0
        self._bytes = sum(c.get_total_buffer_size() for c in self._chunks)
        self._bytes += sum(feature_bytes(f) for f in self._features if f is not None)
        self._index = self._index.renumbered(keep, self.size)
        self.size = self.live = len(keep)

    def _kept_chunks(self, keep: np.ndarray) -> tuple[list[pa.RecordBatch], list[FeatureBatch | None]]:
        """The rows of ``keep`` (ascending) and their features, chunk by chunk: exposures close
        roughly in arrival order, so most chunks are dropped or kept whole and only the few in
        between are copied."""
        chunks, features = self._chunks, self._features
        out_rows, out_features = [], []
        for c, at in _Rows(chunks, self._chunk_starts(), keep).parts:
            if len(at) == chunks[c].num_rows:
                out_rows.append(chunks[c])
                out_features.append(features[c])
                continue
            taken = chunks[c].take(at)
            out_rows.append(taken)
            f = features[c]
            out_features.append(None if f is None else take_features(f, np.asarray(at), EventBatch(taken)))
        return out_rows, out_features

    def state(self) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """The live rows and arrays (compacted first, so that a restore renumbers nothing)."""
        keys, slots = self._index.entries()
        remembered = keys[self._open_slot(slots) < 0]
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
        self._features = [None] * len(self._chunks)  # featurised again when read
        self._starts = np.zeros(0, np.int64)
        self._mins, self._open_from = None, 0
        self._bytes = sum(b.get_total_buffer_size() for b in self._chunks)
        self.size = self.live = n
        self._reindex()
        self._remember(np.asarray(arrays.get("closed_keys", np.zeros(0, np.uint64)), np.uint64))

    def _remember(self, keys: np.ndarray) -> None:
        """Index ``keys`` as closed (a snapshot compacts the store but keeps what it knew)."""
        self._index.add_closed(np.sort(keys))

    def _reindex(self) -> None:
        keys = self.arrays["key"][: self.size]
        order = np.argsort(keys, kind="stable")
        self._index = _KeyIndex(keys[order].copy(), order.astype(np.int64))


#: :meth:`_KeyIndex.newest` of a key it has no entry for
_ABSENT = np.iinfo(np.int64).min


class _KeyIndex:
    """Sorted ``(key, slot)`` entries; a key's newest entry is the last of its run.

    Two levels, so that a batch's new keys never move the whole index: they go into a smaller sorted
    array (a stable sort of two sorted runs), merged into the main one in one pass when it holds
    :data:`MERGE_AT` entries; a compaction, which comes about as often, filters and renumbers both
    (:meth:`renumbered`) without sorting. A slot of -1 marks a key remembered as closed.

    A presence filter (one flag per value of a key's top bits, at least 16 flags per entry) lets
    most keys that have no entry (a batch's new exposures) skip both binary searches: those miss
    the caches, the filter is read in key order.
    """

    MERGE_AT = 65_536

    def __init__(
        self,
        keys: np.ndarray | None = None,
        slots: np.ndarray | None = None,
        new_keys: np.ndarray | None = None,
        new_slots: np.ndarray | None = None,
    ):
        self.keys = np.zeros(0, np.uint64) if keys is None else keys
        self.slots = np.zeros(0, np.int64) if slots is None else slots
        self._new_keys = np.zeros(0, np.uint64) if new_keys is None else new_keys
        self._new_slots = np.zeros(0, np.int64) if new_slots is None else new_slots
        self._rebuild_filter()

    def _rebuild_filter(self) -> None:
        n = len(self.keys) + len(self._new_keys)
        self._shift = np.uint64(64 - max(16, int(16 * n).bit_length()))
        self._present = np.zeros(1 << (64 - int(self._shift)), bool)
        self._present[self.keys >> self._shift] = True
        self._present[self._new_keys >> self._shift] = True

    def _note(self, keys: np.ndarray) -> None:
        """Flag ``keys`` in the filter (rebuilt larger when it holds fewer than 16 flags per entry)."""
        if 16 * (len(self.keys) + len(self._new_keys)) > len(self._present):
            self._rebuild_filter()
        else:
            self._present[keys >> self._shift] = True

    @staticmethod
    def _search(keys: np.ndarray, slots: np.ndarray, probe: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.full(len(probe), _ABSENT, np.int64)
        at = np.searchsorted(keys, probe, side="right") - 1
        safe = np.maximum(at, 0)
        return np.where((at >= 0) & (keys[safe] == probe), slots[safe], _ABSENT)

    def newest(self, probe: np.ndarray) -> np.ndarray:
        """The slot of each key's newest entry (-1: remembered as closed), :data:`_ABSENT` where none."""
        if len(probe) > 1 and (probe[1:] < probe[:-1]).any():
            # searched in key order: a binary search of sorted probes stays in cache (~5x faster)
            order = np.argsort(probe)
            out = np.empty(len(probe), np.int64)
            out[order] = self._newest_sorted(probe[order])
            return out
        return self._newest_sorted(probe)

    def _newest_sorted(self, probe: np.ndarray) -> np.ndarray:
        maybe = np.flatnonzero(self._present[probe >> self._shift])
        if len(maybe) < len(probe):
            out = np.full(len(probe), _ABSENT, np.int64)
            if len(maybe):
                out[maybe] = self._newest_sorted_all(probe[maybe])
            return out
        return self._newest_sorted_all(probe)

    def _newest_sorted_all(self, probe: np.ndarray) -> np.ndarray:
        out = self._search(self._new_keys, self._new_slots, probe)  # newer than every main entry
        miss = np.flatnonzero(out == _ABSENT)
        if len(miss):
            out[miss] = self._search(self.keys, self.slots, probe[miss])
        return out

    def add(self, ordered: np.ndarray, slots: np.ndarray) -> None:
        """Entries for sorted keys, newer than every entry there is."""
        keys = np.concatenate([self._new_keys, ordered])
        # a stable sort of two sorted runs is one merge (timsort): older entries stay first
        order = np.argsort(keys, kind="stable")
        self._new_keys = keys[order]
        self._new_slots = np.concatenate([self._new_slots, slots])[order]
        self._note(ordered)
        if len(self._new_keys) >= self.MERGE_AT:
            self._merge()

    def add_closed(self, ordered: np.ndarray) -> None:
        """Closed markers for sorted keys, older than every entry there is (an open twin wins)."""
        if not len(ordered):
            return
        self.keys, self.slots = _merged(ordered, np.full(len(ordered), -1, np.int64), self.keys, self.slots)
        self._note(ordered)

    def _merge(self) -> None:
        self.keys, self.slots = _merged(self.keys, self.slots, self._new_keys, self._new_slots)
        self._new_keys, self._new_slots = np.zeros(0, np.uint64), np.zeros(0, np.int64)

    def renumbered(self, keep: np.ndarray, size: int) -> _KeyIndex:
        """The entries of the slots ``keep`` (ascending, of ``size``), renumbered ``0..len(keep)-1``
        as a compaction renumbers them; the rest is forgotten. Filtering keeps the order: nothing
        is sorted."""
        remap = np.full(size + 1, -1, np.int64)  # the last: closed markers' (slot -1)
        remap[keep] = np.arange(len(keep))
        main, new = remap[self.slots], remap[self._new_slots]
        return _KeyIndex(self.keys[main >= 0], main[main >= 0], self._new_keys[new >= 0], new[new >= 0])

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Every ``(key, slot)``, sorted by key (merged first)."""
        self._merge()
        return self.keys, self.slots


def _merged(
    a: np.ndarray, a_slots: np.ndarray, b: np.ndarray, b_slots: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys ``a`` and ``b`` (with their slots) as one sorted array, ``b``'s entries after
    ``a``'s equal ones: each of ``b`` goes where ``searchsorted`` puts it, ``a`` fills the rest."""
    at = np.searchsorted(a, b, side="right") + np.arange(len(b))
    keys = np.empty(len(a) + len(b), np.uint64)
    slots = np.empty(len(keys), np.int64)
    rest = np.ones(len(keys), bool)
    rest[at] = False
    keys[at], slots[at] = b, b_slots
    keys[rest], slots[rest] = a, a_slots
    return keys, slots


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

    def inverse(self) -> np.ndarray:
        """Where each requested slot is among the sorted ones (when they came unsorted: ``order``)."""
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order))
        return inverse

    def batch(self) -> pa.RecordBatch:
        if not self.parts:
            return EventBatch.empty().table
        parts = [self.chunks[c].take(at) for c, at in self.parts]
        batch = parts[0] if len(parts) == 1 else pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
        return batch if self.order is None else batch.take(pa.array(self.inverse()))

    def column(self, i: int) -> pa.Array:
        if not self.parts:
            return EventBatch.empty().table.column(i)
        parts = [self.chunks[c].column(i).take(at) for c, at in self.parts]
        col = parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
        return col if self.order is None else col.take(pa.array(self.inverse()))


class StoredRows:
    """Some slots' events (:class:`StoredEvents`, read lazily) and their features, taken from the
    store's chunks as they were when this was made."""

    def __init__(self, rows: _Rows, features: list[FeatureBatch | None], labels: np.ndarray | None):
        self._rows, self._features = rows, features
        self.events = StoredEvents(rows, labels)

    def __len__(self) -> int:
        return len(self.events)

    def features(self, featurizer: Featurizer) -> FeatureBatch:
        """The rows' features under ``featurizer``'s statistics now: :meth:`~Featurizer.transform`
        of :attr:`events` (tested), from the stored features where every chunk has them."""
        parts = self._rows.parts
        if not parts or any(f is None for f in self._features):
            return featurizer.transform(self.events)
        events = self.events
        batch = take_features_parts(
            [(f, np.asarray(at)) for f, (_, at) in zip(self._features, parts)], events
        )
        if self._rows.order is not None:
            batch = take_features(batch, self._rows.inverse(), events)
        return featurizer.restandardized(batch)


class StoredEvents(EventBatch):
    """Stored events whose columns are taken from the store's chunks one by one, when first read.

    The whole batch (``table``) is taken only when something asks for it; labels may replace the
    stored ones, as in :meth:`ExposureStore.rows`.
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
