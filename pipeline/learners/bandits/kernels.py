"""Array kernels shared by the policies: top-k, chunking under a memory budget, list columns."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import SnapshotError

__all__ = ["BUDGET", "from_column", "one_hot", "row_chunks", "to_list_column", "top_k"]

#: float64 elements that one temporary may hold (32 MiB); hot loops chunk their work to stay under it
BUDGET = 1 << 22


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores per row, best first; ties go to the lower index.

    >>> top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), 3).tolist()
    [[1, 3, 2]]
    """
    n, m = scores.shape
    if k == 1:
        return np.argmax(scores, axis=1)[:, None]
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), (n, m))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    return np.take_along_axis(part, order, axis=1)


def one_hot(index: np.ndarray, m: int) -> np.ndarray:
    """``[n, m]`` float rows with 1.0 at ``index[i]``: the distribution of a deterministic choice.

    >>> one_hot(np.array([2, 0]), 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    out = np.zeros((len(index), m))
    out[np.arange(len(index)), index] = 1.0
    return out


def row_chunks(n: int, cost_per_row: int, budget: int = BUDGET) -> Iterator[slice]:
    """Slices of ``range(n)`` whose rows cost at most ``budget`` together (at least one row each)."""
    step = max(1, budget // max(1, cost_per_row))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def to_list_column(arr: np.ndarray) -> pa.Array:
    """A 2-D float array as a list<double> column (large_list when offsets would overflow int32)."""
    n, w = arr.shape
    flat = pa.array(np.ascontiguousarray(arr).ravel().copy())
    if n * w < 2**31:
        return pa.ListArray.from_arrays(pa.array(np.arange(0, n * w + 1, w, dtype=np.int32)), flat)
    return pa.LargeListArray.from_arrays(pa.array(np.arange(0, n * w + 1, w, dtype=np.int64)), flat)


def from_column(col: pa.ChunkedArray, width: int | None, name: str) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if width is None:
        return arr.to_numpy(zero_copy_only=False).astype(np.float64)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    if len(flat) != len(arr) * width or (
        len(arr) and int(pc.max(pc.list_value_length(arr)).as_py()) != width
    ):
        raise SnapshotError(f"arms column {name!r} must hold lists of {width} floats")
    return flat.reshape(len(arr), width)
