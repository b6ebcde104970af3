"""Id vocabularies for embedding tables: hashed uint64 ids -> embedding rows, vectorised with numpy.

Two schemes, selectable per learner (docs/design.md §5):

* :class:`CollisionFreeVocab` (Monolith-style): every admitted id owns one row, so two ids never
  share an embedding. An id is admitted once it has been seen ``min_count`` times (counted in a
  two-row count-min sketch, bounded memory, before admission); rows not seen for ``max_age`` events
  are evicted, and when the table is full the least recently seen rows make room. Freed rows are
  reused. Ids that are unknown, not yet admitted or crowded out share row 0, which therefore learns
  an "average new id" embedding; a freshly admitted id starts from a copy of it (the learner does
  that), so its prediction does not jump on admission.
* :class:`DoubleHashVocab` (Grubhub's choice): every id maps to two buckets of a fixed table,
  ``1 + (low32(h) mod (B-1))`` and ``1 + (high32(h) mod (B-1))``, whose embeddings are summed. Two
  ids collide only if both buckets coincide (probability about ``1/B²``); nothing is ever evicted.

Row 0 is reserved in both: it is where key 0 (an absent value) and unadmitted ids go.

Examples
--------
>>> v = CollisionFreeVocab(capacity=4, min_count=2)
>>> keys = np.array([11, 12, 11], dtype=np.uint64)
>>> v.update(keys, clock=3)[0][:, 0].tolist()  # 11 seen twice: admitted; 12 once: not yet
[1, 0, 1]
>>> v.update(np.array([12, 13], dtype=np.uint64), clock=5)[0][:, 0].tolist()
[2, 0]
>>> v.lookup(np.array([11, 12, 13, 0], dtype=np.uint64))[:, 0].tolist()
[1, 2, 0, 0]
>>> DoubleHashVocab(buckets=101).lookup(np.array([2**40 + 7], dtype=np.uint64)).tolist()
[[8, 57]]
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

__all__ = ["VOCAB_KINDS", "CollisionFreeVocab", "DoubleHashVocab", "VocabState", "Vocabulary", "make_vocab"]

VOCAB_KINDS = ("collision_free", "double_hash")
_LOW32 = np.uint64(0xFFFFFFFF)


@dataclass
class VocabState:
    """A vocabulary's learned state as plain arrays (for snapshots and checkpoints) and counters."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class Vocabulary(abc.ABC):
    """Maps uint64 id hashes to ``rows_per_key`` embedding rows each (a table of ``capacity`` rows)."""

    rows_per_key: int = 1

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"capacity must be an integer >= 2, got {capacity!r}")
        self.capacity = capacity
        self.evictions = 0

    @abc.abstractmethod
    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows ``[n, rows_per_key]`` (int64) of ``keys`` without changing anything."""

    @abc.abstractmethod
    def update(self, keys: np.ndarray, clock: int) -> tuple[np.ndarray, np.ndarray]:
        """Count, admit and evict at time ``clock``; returns (rows like :meth:`lookup`, rows newly assigned)."""

    @abc.abstractmethod
    def rows_in_use(self) -> int:
        """Rows currently holding an id (bucket rows ever touched, for double hashing)."""

    @abc.abstractmethod
    def state(self) -> VocabState: ...

    @abc.abstractmethod
    def load_state(self, state: VocabState) -> None: ...


class CollisionFreeVocab(Vocabulary):
    """One row per admitted id; frequency admission, age and size eviction, row reuse.

    Parameters
    ----------
    capacity
        Rows in the embedding table, row 0 included (so ``capacity - 1`` ids at most).
    min_count
        Occurrences before an id gets its own row (1 = at first sight).
    max_age
        Rows whose id was not seen for more than this many events (of the learner's clock) are
        freed; 0 disables age eviction (size eviction still applies).
    sketch_width
        Counters per row of the admission sketch (a power of two).
    """

    rows_per_key = 1

    def __init__(self, capacity: int, min_count: int = 1, max_age: int = 0, sketch_width: int = 1 << 16):
        super().__init__(capacity)
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        if not isinstance(max_age, int) or max_age < 0:
            raise ValueError(f"max_age must be an integer >= 0, got {max_age!r}")
        if sketch_width < 2 or sketch_width & (sketch_width - 1):
            raise ValueError(f"sketch_width must be a power of two >= 2, got {sketch_width!r}")
        self.min_count = min_count
        self.max_age = max_age
        self._sorted_keys = np.zeros(0, np.uint64)  # admitted keys, ascending
        self._sorted_rows = np.zeros(0, np.int64)  # their rows
        self._row_key = np.zeros(capacity, np.uint64)  # 0 = free (row 0 is never assigned)
        self._last_seen = np.zeros(capacity, np.int64)
        self._count = np.zeros(capacity, np.int64)
        self._sketch = (
            np.zeros((2, sketch_width), np.uint32) if min_count > 1 else np.zeros((2, 0), np.uint32)
        )
        self.admissions = 0

    # -- reading ---------------------------------------------------------------------------------
    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, 0 where it is not admitted."""
        if len(self._sorted_keys) == 0:
            return np.zeros(len(keys), np.int64)
        pos = np.searchsorted(self._sorted_keys, keys)
        pos = np.minimum(pos, len(self._sorted_keys) - 1)
        hit = self._sorted_keys[pos] == keys
        return np.where(hit & (keys != 0), self._sorted_rows[pos], 0)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        return self._find(np.asarray(keys, np.uint64))[:, None]

    def rows_in_use(self) -> int:
        return len(self._sorted_keys)

    # -- learning --------------------------------------------------------------------------------
    def update(self, keys: np.ndarray, clock: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(keys, np.uint64)
        uniq, counts = np.unique(keys[keys != 0], return_counts=True)
        rows = self._find(uniq)
        known = rows > 0
        self._last_seen[rows[known]] = clock
        self._count[rows[known]] += counts[known]
        self._expire(clock)
        new_keys, new_counts = uniq[~known], counts[~known]
        if self.min_count > 1 and len(new_keys):
            new_keys, new_counts = self._admissible(new_keys, new_counts)
        fresh = self._admit(new_keys, new_counts, clock)
        return self.lookup(keys), fresh

    def _admissible(self, keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width = self._sketch.shape[1]
        mask = np.uint64(width - 1)
        h1 = (keys & mask).astype(np.int64)
        h2 = ((keys >> np.uint64(32)) & mask).astype(np.int64)
        # keys are unique here, but two of them may share a counter: add through bincount
        for r, h in ((0, h1), (1, h2)):
            add = np.bincount(h, weights=counts, minlength=width).astype(np.uint64)
            self._sketch[r] = np.minimum(self._sketch[r] + add, np.iinfo(np.uint32).max).astype(np.uint32)
        estimate = np.minimum(self._sketch[0, h1], self._sketch[1, h2])
        ok = estimate >= self.min_count
        return keys[ok], estimate[ok].astype(np.int64)

    def _expire(self, clock: int) -> None:
        if self.max_age <= 0:
            return
        used = self._row_key != 0
        stale = np.flatnonzero(used & (clock - self._last_seen > self.max_age))
        self._free(stale)

    def _free(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self._row_key[rows] = 0
        self._last_seen[rows] = 0
        self._count[rows] = 0
        keep = self._row_key[self._sorted_rows] != 0
        self._sorted_keys = self._sorted_keys[keep]
        self._sorted_rows = self._sorted_rows[keep]
        self.evictions += len(rows)

    def _admit(self, keys: np.ndarray, counts: np.ndarray, clock: int) -> np.ndarray:
        if len(keys) == 0:
            return np.zeros(0, np.int64)
        # most frequent first when not every key fits; ties by key for determinism
        order = np.lexsort((keys, -counts))
        keys, counts = keys[order], counts[order]
        free = np.flatnonzero(self._row_key[1:] == 0) + 1
        short = len(keys) - len(free)
        if short > 0:
            # least recently seen rows make room, but never a row already seen in this batch
            used = np.flatnonzero((self._row_key != 0) & (self._last_seen < clock))
            victims = used[np.lexsort((used, self._last_seen[used]))[:short]]
            self._free(victims)
            free = np.flatnonzero(self._row_key[1:] == 0) + 1
        keys, counts = keys[: len(free)], counts[: len(free)]
        rows = free[: len(keys)]
        self._row_key[rows] = keys
        self._last_seen[rows] = clock
        self._count[rows] = counts
        by_key = np.argsort(keys)  # inserting ascending keys at their positions keeps the array sorted
        pos = np.searchsorted(self._sorted_keys, keys[by_key])
        self._sorted_keys = np.insert(self._sorted_keys, pos, keys[by_key])
        self._sorted_rows = np.insert(self._sorted_rows, pos, rows[by_key])
        self.admissions += len(keys)
        return np.sort(rows)

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> VocabState:
        rows = np.sort(self._sorted_rows)
        return VocabState(
            arrays={
                "key": self._row_key[rows].copy(),
                "row": rows,
                "last_seen": self._last_seen[rows].copy(),
                "count": self._count[rows].copy(),
                "sketch": self._sketch.copy(),
            },
            counters={"evictions": self.evictions, "admissions": self.admissions},
        )

    def load_state(self, state: VocabState) -> None:
        a = state.arrays
        rows = np.asarray(a["row"], np.int64)
        if len(rows) and (rows.min() < 1 or rows.max() >= self.capacity):
            raise ValueError(
                f"vocabulary rows must lie in [1, {self.capacity}), got {rows.min()}..{rows.max()}"
            )
        sketch = np.asarray(a["sketch"], np.uint32)
        if sketch.shape != self._sketch.shape:  # saved under another min_count: start counting afresh
            sketch = np.zeros_like(self._sketch)
        self._row_key[:] = 0
        self._last_seen[:] = 0
        self._count[:] = 0
        self._row_key[rows] = np.asarray(a["key"], np.uint64)
        self._last_seen[rows] = a["last_seen"]
        self._count[rows] = a["count"]
        order = np.argsort(self._row_key[rows], kind="stable")
        self._sorted_keys = self._row_key[rows][order]
        self._sorted_rows = rows[order]
        self._sketch = sketch.copy()
        self.evictions = int(state.counters.get("evictions", 0))
        self.admissions = int(state.counters.get("admissions", 0))


class DoubleHashVocab(Vocabulary):
    """Two hashed buckets per id in a fixed table of ``buckets`` rows (row 0 reserved for absent values)."""

    rows_per_key = 2

    def __init__(self, buckets: int):
        super().__init__(buckets)
        self._touched = np.zeros(buckets, bool)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.uint64)
        m = np.uint64(self.capacity - 1)
        out = np.empty((len(keys), 2), np.int64)
        out[:, 0] = ((keys & _LOW32) % m).astype(np.int64) + 1
        out[:, 1] = ((keys >> np.uint64(32)) % m).astype(np.int64) + 1
        out[keys == 0] = 0
        return out

    def update(self, keys: np.ndarray, clock: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.lookup(keys)
        self._touched[rows.ravel()] = True
        return rows, np.zeros(0, np.int64)

    def rows_in_use(self) -> int:
        return int(self._touched[1:].sum())

    def state(self) -> VocabState:
        return VocabState(arrays={"touched": self._touched.copy()}, counters={"evictions": 0})

    def load_state(self, state: VocabState) -> None:
        touched = np.asarray(state.arrays["touched"], bool)
        if touched.shape != self._touched.shape:
            raise ValueError(f"double-hash table has {len(touched)} buckets, expected {self.capacity}")
        self._touched = touched.copy()


def make_vocab(kind: str, capacity: int, min_count: int = 1, max_age: int = 0) -> Vocabulary:
    """A vocabulary of ``kind`` (one of :data:`VOCAB_KINDS`)."""
    if kind == "collision_free":
        return CollisionFreeVocab(capacity, min_count=min_count, max_age=max_age)
    if kind == "double_hash":
        return DoubleHashVocab(capacity)
    raise ValueError(f"vocab must be one of {', '.join(VOCAB_KINDS)}, got {kind!r}")
