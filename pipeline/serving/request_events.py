"""Serving requests as events: one event per candidate, in the event schema.

A request's candidates share its user and context features; each candidate adds its own. The
events are what a replayed log of the same impressions would decode to (tested), so the
featurizer and every learner read a request exactly as they read the stream.
:mod:`pipeline.serving.request_features` featurizes requests without building these columns
first, and builds them only when a learner reads them.
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.events.schema import EVENT_SCHEMA, EventBatch
from pipeline.serving.requests import Request

__all__ = ["own_entries", "request_events", "requests_events", "split_features"]


def split_features(features: dict[str, Any]) -> tuple[list[str], list[str], list[str], list[float]]:
    """Categorical keys and values, numeric keys and values of one feature dict (values checked)."""
    ck, cv, nk, nv = [], [], [], []
    for k, v in features.items():
        if type(v) is str:
            ck.append(k)
            cv.append(v)
        else:
            nk.append(k)
            nv.append(v)
    return ck, cv, nk, nv


class _Entries:
    """One map column's entries of a batch: each request's context part, each row's own part."""

    __slots__ = ("ctx", "own")

    def __init__(self):
        self.ctx: list[tuple[list[str], list]] = []  # per request: keys, values
        self.own: list[tuple[list[str], list, np.ndarray]] = []  # per request: keys, values, per-row counts

    def add(self, ctx_keys, ctx_values, own_keys, own_values, own_counts: list[int]) -> None:
        self.ctx.append((ctx_keys, ctx_values))
        self.own.append((own_keys, own_values, np.asarray(own_counts, np.int64)))

    def map_array(self, value_type: pa.DataType) -> pa.Array:
        """Row r's map: its request's context entries, then its own (the context's keys first, as
        ``{**context, **own}`` orders them when no key is in both)."""
        keys: list[str] = []
        values: list = []
        lengths = []
        for (ck, cv), (ok, ov, counts) in zip(self.ctx, self.own):
            n, k = len(counts), len(ck)
            if not ok:  # the context's entries on every row
                keys += ck * n
                values += cv * n
                lengths.append(np.full(n, k))
            elif not k:  # the rows' own entries, already row by row
                keys += ok
                values += ov
                lengths.append(counts)
            else:  # interleave: each row's context entries, then its own
                lengths.append(counts + k)
                uniform = int(counts[0])
                if (counts == uniform).all():
                    grid = np.empty((n, k + uniform), dtype=object)
                    grid[:, :k] = ck
                    grid[:, k:] = np.asarray(ok, dtype=object).reshape(n, uniform)
                    keys += grid.ravel().tolist()
                    grid[:, :k] = cv
                    grid[:, k:] = np.asarray(ov, dtype=object).reshape(n, uniform)
                    values += grid.ravel().tolist()
                else:
                    at = 0
                    for c in counts.tolist():
                        keys += ck
                        keys += ok[at : at + c]
                        values += cv
                        values += ov[at : at + c]
                        at += c
        offsets = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int32)
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return pa.MapArray.from_arrays(
            pa.array(offsets), pa.array(keys, pa.string()), pa.array(values, value_type)
        )


def own_entries(item_features: list[dict[str, Any]]):
    """The candidates' own features, flattened: (cat keys, values, counts per row, num keys, values,
    counts per row), the counts as lists."""
    counts = list(map(len, item_features))
    zero = [0] * len(counts)
    if not any(counts):
        return [], [], zero, [], [], zero
    keys = list(itertools.chain.from_iterable(item_features))
    values = list(itertools.chain.from_iterable(map(dict.values, item_features)))
    kinds = set(map(type, values))
    if str not in kinds:
        return [], [], zero, keys, values, counts
    if kinds == {str}:
        return keys, values, counts, [], [], zero
    picked = [type(v) is str for v in values]
    rows = np.repeat(np.arange(len(counts)), counts)
    cat_counts = np.bincount(rows[np.array(picked)], minlength=len(counts))
    ck = [k for k, c in zip(keys, picked) if c]
    cv = [v for v, c in zip(values, picked) if c]
    nk = [k for k, c in zip(keys, picked) if not c]
    nv = [v for v, c in zip(values, picked) if not c]
    return ck, cv, cat_counts.tolist(), nk, nv, (np.array(counts) - cat_counts).tolist()


@functools.lru_cache(maxsize=64)
def _constant_columns(n: int) -> tuple[pa.Array, ...]:
    """The columns a request's events hold the same for every batch of ``n`` rows (immutable)."""
    return (
        pa.array(np.zeros(n)),
        pa.nulls(n, pa.string()),
        pa.nulls(n, pa.int64()),
        pa.nulls(n, pa.float64()),
        pa.nulls(n, pa.list_(pa.string())),
        pa.array(np.arange(n, dtype=np.int64)),
    )


def request_events(req: Request, item_ids: list[str], item_features: list[dict[str, Any]]) -> EventBatch:
    """One event per candidate: the user, the candidate, the context features merged with the item's."""
    return requests_events([(req, item_ids, item_features)])


def requests_events(parts: list[tuple[Request, list[str], list[dict[str, Any]]]]) -> EventBatch:
    """:func:`request_events` of several requests, one after the other, as one batch.

    Built column by column with few Arrow calls (each costs microseconds): each request's context
    features are split once and repeated for its candidates, the candidates' own features are
    flattened in C-level iteration; only a candidate feature that overrides a context feature of
    the same name takes the row-by-row merge.
    """
    cat, num = _Entries(), _Entries()
    items: list[str] = []
    users: list[str] = []
    request_ids: list[str | None] = []
    event_ids: list[str] = []
    for req, item_ids, item_features in parts:
        m = len(item_ids)
        items += item_ids
        users += [req.user_id] * m
        request_ids += [req.request_id] * m
        prefix = f"{req.request_id or 'request'}:"
        event_ids += (
            [prefix + j for j in _POSITIONS[:m]]
            if m <= len(_POSITIONS)
            else [f"{prefix}{j}" for j in range(m)]
        )
        context = req.features
        if (
            any(item_features)
            and context
            and not context.keys().isdisjoint(itertools.chain.from_iterable(item_features))
        ):
            merged = [{**context, **own} for own in item_features]
            ck, cv, cc, nk, nv, nc = own_entries(merged)
            cat.add([], [], ck, cv, cc)
            num.add([], [], nk, nv, nc)
            continue
        ck, cv, nk, nv = split_features(context)
        ock, ocv, occ, onk, onv, onc = own_entries(item_features)
        cat.add(ck, cv, ock, ocv, occ)
        num.add(nk, nv, onk, onv, onc)
    n = len(items)
    label, event_type, position, propensity, candidates, row = _constant_columns(n)
    columns = [
        pa.array(event_ids, pa.string()),
        pa.array(np.full(n, int(time.time() * 1000), np.int64)),
        pa.array(users, pa.string()),
        pa.array(items, pa.string()),
        label,
        event_type,
        position,
        propensity,
        pa.array(request_ids, pa.string()),
        pa.nulls(n, pa.string()),  # exposure_id: a request is no outcome
        candidates,
        cat.map_array(pa.string()),
        num.map_array(pa.float64()),
        row,
    ]
    return EventBatch(pa.RecordBatch.from_arrays(columns, schema=EVENT_SCHEMA))


_POSITIONS = [str(j) for j in range(1024)]  # "0".."1023": event ids without formatting each number
