"""The growable arm table: arm ids (strings) to dense row indices, looked up vectorised.

New items appear in the stream all the time, so a policy cannot know its arms up front. Every
arm id is hashed with the stable hash of :mod:`pipeline.hashing` under the namespace ``item_id``
(the same hash as :attr:`pipeline.features.FeatureBatch.item_hash`), and a sorted copy of the
hashes answers lookups with one ``searchsorted`` per batch. The ids themselves are kept so that
snapshots name their arms.

Examples
--------
>>> table = ArmTable()
>>> table.resolve(["b", "a", "b"]).tolist()
[0, 1, 0]
>>> table.resolve(np.array([3])).tolist(), table.ids   # an integer is an id ("3"), never a row
([2], ['b', 'a', '3'])
>>> table.find(hash_strings(["a", "zz"], "item_id")).tolist()
[1, -1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from pipeline.hashing import hash_strings

__all__ = ["ARM_NAMESPACE", "ArmTable", "grow_rows"]

#: hash namespace of arm ids; equal to the featurizer's, so ``FeatureBatch.item_hash`` finds arms
ARM_NAMESPACE = "item_id"


def grow_rows(arr: np.ndarray, n_used: int, n_total: int, prior) -> np.ndarray:
    """Rows ``n_used:n_total`` of ``arr`` set to ``prior``, reallocating with doubling capacity.

    Returns ``arr`` itself when it is large enough, else a bigger copy (amortised O(1) per arm).
    """
    if n_total > len(arr):
        bigger = np.empty((max(n_total, 2 * len(arr), 8), *arr.shape[1:]), dtype=arr.dtype)
        bigger[:n_used] = arr[:n_used]
        arr = bigger
    arr[n_used:n_total] = prior
    return arr


class ArmTable:
    """Arm ids and their stable hashes, in row order; rows are never reused or reordered."""

    def __init__(self, ids: Sequence[str] = ()):
        self.ids: list[str] = []
        self.hashes = np.zeros(0, np.uint64)
        self._sorted = np.zeros(0, np.uint64)
        self._order = np.zeros(0, np.int64)
        if len(ids):
            ids = list(ids)
            hashes = hash_strings(pa.array(ids, pa.string()), ARM_NAMESPACE)
            if len(np.unique(hashes)) != len(hashes):
                raise ValueError("ids must be unique")
            self._append(ids, hashes)

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """Rows of arms with these id hashes; -1 where the arm is unknown."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        if not len(self.ids):
            return np.full(hashes.shape, -1, np.int64)
        pos = np.searchsorted(self._sorted, hashes)
        pos_c = np.minimum(pos, len(self._sorted) - 1)
        hit = self._sorted[pos_c] == hashes
        return np.where(hit, self._order[pos_c], -1)

    def resolve_hashes(self, hashes: np.ndarray, ids_at: Callable[[np.ndarray], list[str]]) -> np.ndarray:
        """Rows for ``hashes``, adding unseen arms; ``ids_at(positions)`` names them on demand."""
        rows = self.find(hashes)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            _, first = np.unique(hashes[missing], return_index=True)
            positions = missing[np.sort(first)]  # in order of first appearance
            self._append(list(ids_at(positions)), hashes[positions])
            rows = self.find(hashes)
        return rows

    def resolve(self, arms, name: str = "arms") -> np.ndarray:
        """Rows of ``arms`` (ids), adding unseen ones in order of first appearance.

        Integers are ids written in decimal (``7`` is the arm ``"7"``), as the event decoders
        read integer item ids; they never address rows, so no arm is ever created that was not
        named.
        """
        shape, ids = _arm_ids(arms, name)
        hashes = hash_strings(ids, ARM_NAMESPACE)
        rows = self.resolve_hashes(hashes, lambda pos: ids.take(pa.array(pos)).to_pylist())
        return rows.reshape(shape)

    def lookup(self, arms, name: str = "arms") -> np.ndarray:
        """Rows of ``arms`` as :meth:`resolve` gives them, -1 where the arm is unknown; adds nothing."""
        shape, ids = _arm_ids(arms, name)
        return self.find(hash_strings(ids, ARM_NAMESPACE)).reshape(shape)

    def _append(self, ids: list[str], hashes: np.ndarray) -> None:
        self.ids.extend(ids)
        self.hashes = np.concatenate([self.hashes, hashes.astype(np.uint64)])
        self._order = np.argsort(self.hashes, kind="stable")
        self._sorted = self.hashes[self._order]


def _arm_ids(arms, name: str) -> tuple[tuple[int, ...], pa.Array]:
    """``(shape, ids)``: the arms' ids, flattened as an Arrow string array (integers in decimal)."""
    if isinstance(arms, (pa.Array, pa.ChunkedArray)):
        arms = np.asarray(arms.to_pylist(), dtype=object)
    arms = np.asarray(arms)
    if arms.dtype.kind in "iu":
        arms = arms.astype(str)
    elif arms.dtype.kind not in "UO":
        raise TypeError(f"{name} must hold arm ids (str or int), got dtype {arms.dtype}")
    values = arms.ravel().tolist()
    try:
        return arms.shape, pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # an object array with integers (or worse) in it
        pass
    for a in values:
        if type(a) is bool or not isinstance(a, (str, int, np.integer)):
            raise TypeError(f"{name} must hold arm ids (str or int), got {type(a).__name__} {a!r}")
    return arms.shape, pa.array([a if type(a) is str else str(int(a)) for a in values], pa.string())
