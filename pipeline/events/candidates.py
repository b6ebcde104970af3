"""The optional ``candidates`` field: the item ids the logging policy chose the event's item from.

An exposure that says what it was chosen among lets off-policy evaluation score a target policy on
the real decision (``streamlearn evaluate --policy``, the live policy-value gauges) instead of
assuming every known item was a candidate. The serving decision log writes it on every exposure.

Rules (the README's "Events" section states the same):

* a JSON array of 1 to :data:`MAX_CANDIDATES` ids, strings or integers (written in decimal, as
  other ids are); in Parquet a list column of strings, integers or dictionary strings;
* no null or duplicate entries, and the event's own ``item_id`` among them: a logged choice outside
  its candidate set has no propensity a target policy can be compared with;
* absent or null: the event does not say (evaluation then falls back to its default set).

Examples
--------
>>> col = pa.array([["a", "b"], None, ["c", "a", "b"], ["d", "e"]], CANDIDATES_TYPE)
>>> [(rows.tolist(), ids.tolist()) for rows, ids in candidate_groups(col)]
[([0, 3], [['a', 'b'], ['d', 'e']]), ([2], [['c', 'a', 'b']])]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.events.checks import _describe, _Invalid, _one
from pipeline.events.columns import _usable_id
from pipeline.events.reasons import OUT_OF_RANGE, WRONG_TYPE

__all__ = [
    "CANDIDATES_TYPE",
    "MAX_CANDIDATES",
    "candidate_groups",
    "check_candidate_values",
    "logged_candidate_groups",
]

CANDIDATES_TYPE = pa.list_(pa.string())
#: most ids one event's candidate set may hold (a serving request's limit is lower by default)
MAX_CANDIDATES = 10_000

_WHAT = "a list of item ids (strings or integers)"
_NULL_ENTRY = "field 'candidates' must not hold null entries"


def check_candidate_values(objs: list, inv: _Invalid) -> pa.ListArray:
    """``candidates`` of parsed JSON records as a list array; marks records whose value is unusable."""
    n = len(objs)
    col = [o.get("candidates") if type(o) is dict else None for o in objs]
    offsets = np.zeros(n + 1, np.int32)
    values: list[str] = []
    valid = np.zeros(n, bool)
    for i, c in enumerate(col):
        if c is not None and not inv.bad[i]:
            err = _list_error(c)
            if err is None:
                values.extend(x if type(x) is str else str(x) for x in c)
                valid[i] = True
            else:
                inv.mark(_one(n, i), *err)
        offsets[i + 1] = len(values)
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(values, pa.string()), mask=pa.array(~valid)
    )


def _list_error(c) -> tuple[str, str] | None:
    if type(c) is not list:
        return WRONG_TYPE, f"field 'candidates' must be {_WHAT}, got {_describe(c)}"
    if not c or len(c) > MAX_CANDIDATES:
        return OUT_OF_RANGE, f"field 'candidates' must hold 1 to {MAX_CANDIDATES} ids, got {len(c)}"
    for x in c:
        if x is None:
            return WRONG_TYPE, _NULL_ENTRY
        if type(x) is not str and type(x) is not int:
            return WRONG_TYPE, f"field 'candidates' must be {_WHAT}, got an entry of type {_describe(x)}"
    return None


def arrow_candidates(batch: pa.RecordBatch, inv: _Invalid) -> pa.ListArray:
    """The ``candidates`` column of a columnar batch as list<string>, or all nulls without one."""
    n = batch.num_rows
    if "candidates" not in batch.schema.names or pa.types.is_null(batch.column("candidates").type):
        return pa.nulls(n, CANDIDATES_TYPE)
    col = batch.column("candidates")
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not _usable_id(t.value_type):
        inv.mark(np.ones(n, bool), WRONG_TYPE, f"field 'candidates' must be {_WHAT}, got column type {t}")
        return pa.nulls(n, CANDIDATES_TYPE)
    if pa.types.is_dictionary(t.value_type):
        col = pa.ListArray.from_arrays(
            col.offsets, col.values.dictionary_decode(), mask=col.is_null() if col.null_count else None
        )
    if col.type != CANDIDATES_TYPE:
        col = col.cast(CANDIDATES_TYPE)
    lengths = pc.list_value_length(col).fill_null(1).to_numpy(zero_copy_only=False)
    inv.mark(
        (lengths < 1) | (lengths > MAX_CANDIDATES),
        OUT_OF_RANGE,
        lambda i: f"field 'candidates' must hold 1 to {MAX_CANDIDATES} ids, got {lengths[i]}",
    )
    return col  # null entries: mark_inconsistent_candidates, which flattens the lists anyway


def mark_inconsistent_candidates(inv: _Invalid, item_id: pa.Array, candidates: pa.ListArray) -> None:
    """Mark events whose candidates hold a null, repeat an id or leave out the event's own ``item_id``."""
    if candidates.null_count == len(candidates):
        return
    n = len(candidates)
    parents = pc.list_parent_indices(candidates)
    flat = pc.list_flatten(candidates)
    if not len(flat):
        return
    p = parents.to_numpy()
    if flat.null_count:
        holes = np.zeros(n, bool)
        holes[p[np.asarray(flat.is_null())]] = True
        inv.mark(holes, WRONG_TYPE, _NULL_ENTRY)
    own = pc.equal(flat, item_id.take(parents)).fill_null(False)
    has_own = np.zeros(n, bool)
    has_own[p[np.asarray(own)]] = True
    present = np.asarray(candidates.is_valid())
    inv.mark(
        present & ~has_own,
        OUT_OF_RANGE,
        lambda i: f"item_id {item_id[i].as_py()!r} is not among the event's {len(candidates[i])} candidates",
    )
    codes = pc.dictionary_encode(flat, null_encoding="encode").indices.to_numpy().astype(np.int64)
    width = int(codes.max()) + 1
    keys = np.sort(p.astype(np.int64) * width + codes)  # one key per (event, id): repeats sort together
    same = keys[1:] == keys[:-1]
    if same.any():
        dup = np.zeros(n, bool)
        dup[keys[1:][same] // width] = True
        inv.mark(dup, OUT_OF_RANGE, "field 'candidates' must not repeat an id")


def candidate_groups(candidates: pa.Array) -> list[tuple[np.ndarray, np.ndarray]]:
    """Events that carry candidates, grouped by set size: ``(rows, ids [len(rows), m])`` per size.

    Row order is kept within a group and groups come in order of their first row, so that a
    policy scores each group with one ``[n, m]`` call.
    """
    if isinstance(candidates, pa.ChunkedArray):
        candidates = candidates.combine_chunks()
    if candidates.null_count == len(candidates):
        return []
    lengths = pc.list_value_length(candidates).fill_null(0).to_numpy(zero_copy_only=False)
    flat = np.asarray(pc.list_flatten(candidates).to_numpy(zero_copy_only=False), dtype=object)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = []
    sizes, first = np.unique(lengths, return_index=True)
    for m in sizes[np.argsort(first)]:
        if m == 0:
            continue
        rows = np.flatnonzero(lengths == m)
        out.append((rows, flat[starts[rows][:, None] + np.arange(m)]))
    return out


def logged_candidate_groups(events, rows: np.ndarray | None = None):
    """:func:`candidate_groups` of ``events`` (or of its ``rows``), each with the logged item's place.

    Yields ``(at, ids, where)``: positions into ``rows`` (or the batch), their candidate ids
    ``[len(at), m]`` and the index of each event's ``item_id`` among them (present: the decoder
    checks it).
    """
    listed, item_id = events.candidates, events.column("item_id")
    if rows is not None:
        taken = pa.array(rows, pa.int64())
        listed, item_id = listed.take(taken), item_id.take(taken)
    groups = candidate_groups(listed)
    if not groups:
        return
    items = np.asarray(item_id.to_numpy(zero_copy_only=False), object)
    for at, ids in groups:
        yield at, ids, (ids == items[at][:, None]).argmax(axis=1)
