"""Array kernels shared by the policies: top-k, chunking under a memory budget, list columns."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import SnapshotError

__all__ = [
    "BUDGET",
    "from_column",
    "greedy_distribution",
    "one_hot",
    "row_chunks",
    "tie_propensities",
    "to_list_column",
    "top_k",
]

#: float64 elements that one temporary may hold (32 MiB); hot loops chunk their work to stay under it
BUDGET = 1 << 22


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Column indices of the ``k`` largest scores per row, best first.

    Ties go to the lower index, or with ``rng`` in a uniformly random order: a deterministic
    policy must not send every decision to the first of its tied arms (early on, every untried
    arm has the same score). :func:`tie_propensities` gives the probabilities of such a choice.

    >>> top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), 3).tolist()
    [[1, 3, 2]]
    >>> rng = np.random.default_rng(0)
    >>> sorted({int(top_k(np.zeros((1, 3)), 1, rng)[0, 0]) for _ in range(50)})
    [0, 1, 2]
    """
    n, m = scores.shape
    if k == 1:
        best = np.argmax(scores, axis=1)[:, None]
        if rng is None:
            return best
        top, runner_up = _value_and_best_other(scores, best[:, 0])
        tied = np.flatnonzero(runner_up == top)  # only rows that tie draw random keys
        if len(tied):
            keys = np.where(scores[tied] == top[tied, None], rng.random((len(tied), m)), -1.0)
            best[tied, 0] = np.argmax(keys, axis=1)
        return best
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), (n, m))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    chosen = np.take_along_axis(part, order, axis=1)
    if rng is None:
        return chosen
    vals = np.take_along_axis(scores, chosen, axis=1)
    # a tie inside the slate, or one across its last slot, makes the order a draw
    straddles = (scores >= vals[:, -1:]).sum(axis=1) > k
    tied = np.flatnonzero(straddles | (np.diff(vals, axis=1) == 0).any(axis=1))
    if len(tied):
        chosen = chosen.copy()
        chosen[tied] = np.lexsort((rng.random((len(tied), m)), -scores[tied]), axis=-1)[:, :k]
    return chosen


def tie_propensities(scores: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Probability that :func:`top_k` with random tie-breaking puts ``chosen[i, s]`` at slot s.

    An item whose score g candidates share (itself included) and a candidates beat takes each of
    the slots a .. a+g-1 with probability 1/g, and no other slot.

    >>> tie_propensities(np.array([[0.5, 0.9, 0.9, 0.9]]), np.array([[2, 1, 0]])).tolist()
    [[0.3333333333333333, 0.3333333333333333, 0.0]]
    """
    if chosen.shape[1] == 1:  # the usual top-1 decision: compare every score only at ties
        value, best_other = _value_and_best_other(scores, chosen[:, 0])
        out = (value >= best_other).astype(np.float64)
        tied = np.flatnonzero(value == best_other)
        if len(tied):
            out[tied] = 1.0 / (scores[tied] == value[tied, None]).sum(axis=1)
        return out[:, None]
    out = np.empty(chosen.shape)
    for slot in range(chosen.shape[1]):
        v = np.take_along_axis(scores, chosen[:, slot : slot + 1], axis=1)
        above = (scores > v).sum(axis=1)
        same = (scores == v).sum(axis=1)
        out[:, slot] = np.where((above <= slot) & (slot < above + same), 1.0 / same, 0.0)
    return out


def _value_and_best_other(scores: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's score at ``cols`` and the best of its other scores (-inf when there is none).

    Two SIMD reductions (mask the column, take the max) instead of comparing every score: rows
    whose two values are equal hold a tie.
    """
    rows = np.arange(len(cols))
    value = scores[rows, cols].astype(np.float64)
    if scores.shape[1] == 1:
        return value, np.full(len(cols), -np.inf)
    masked = scores if scores.flags.writeable and scores.dtype.kind == "f" else scores.astype(np.float64)
    masked[rows, cols] = -np.inf  # in place and restored: no copy of the matrix
    best_other = masked.max(axis=1)
    masked[rows, cols] = value
    return value, best_other


def greedy_distribution(scores: np.ndarray) -> np.ndarray:
    """``[n, m]`` probabilities of the top-1 choice of :func:`top_k` with random tie-breaking:
    uniform over each row's maxima.

    >>> greedy_distribution(np.array([[0.2, 0.7, 0.7], [1.0, 0.0, 0.5]])).tolist()
    [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]
    """
    best = scores == scores.max(axis=1, keepdims=True)
    return best / best.sum(axis=1, keepdims=True)


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
