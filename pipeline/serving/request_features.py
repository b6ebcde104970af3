"""Features of serving requests, hashed per request instead of per candidate row.

A request's candidates share its user and context features, so each request's user and context
are hashed once and repeated over its rows; only the item ids and the candidates' own features are
hashed row by row. The parts go to :meth:`~pipeline.features.Featurizer.assemble`, so the result
is exactly ``featurizer.transform(requests_events(...))`` (tested): the same keys, values and
order in every row, and the same id hashes, numeric columns and categorical entries. The events
themselves are :class:`~pipeline.events.schema.DeferredEvents`, built only if a learner reads a
column (the neural ranker reads the categorical map; ftrl and the linear bandits read none).

Examples
--------
>>> from pipeline.features import FeatureSpec, Featurizer
>>> from pipeline.serving.requests import parse_request
>>> from pipeline.serving.request_events import requests_events
>>> fz = Featurizer(FeatureSpec(crosses=(("user_id", "device"),)))
>>> req = parse_request({"model": "ftrl", "user_id": "u", "features": {"device": "ios", "hour": 20},
...                      "candidates": ["a", {"item_id": "b", "features": {"price": 2.5}}]})
>>> fast = request_features(fz, [req])
>>> slow = fz.transform(requests_events([(req, req.item_ids, req.item_features)]))
>>> bool((fast.keys == slow.keys).all() and (fast.indptr == slow.indptr).all())
True
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.events.schema import DeferredEvents
from pipeline.features import FeatureBatch, Featurizer, _ranges
from pipeline.hashing import combine, hash_one, hash_repeated_strings, hash_strings
from pipeline.serving.request_events import own_entries, requests_events, split_features
from pipeline.serving.requests import Request

__all__ = ["item_hashes", "request_features"]


@functools.lru_cache(maxsize=1 << 15)
def _hash(value: str, namespace: str) -> int:
    """:func:`~pipeline.hashing.hash_one`, remembered: users, context values and feature names
    recur from request to request, and one string costs less in Python than an array call."""
    return hash_one(value, namespace)


_ITEM_HASHES: dict[str, int] = {}
_ITEM_HASHES_MAX = 1 << 16


def item_hashes(ids: list[str]) -> np.ndarray:
    """``hash_strings(ids, "item_id")``, with the hashes of recent ids remembered.

    Candidates recur from request to request (they come from one catalogue), and a dictionary
    lookup per id costs a fraction of hashing it again; the ids not remembered are hashed in one
    vectorised pass and remembered. The memory is bounded: it starts over when it holds
    ``2**16`` ids. Safe from several threads (a lookup that misses an id being added hashes it).

    >>> bool((item_hashes(["a", "b", "a"]) == hash_strings(["a", "b", "a"], "item_id")).all())
    True
    """
    known = _ITEM_HASHES
    out = np.fromiter(map(known.get, ids, itertools.repeat(0)), np.uint64, len(ids))
    missing = np.flatnonzero(out == 0)  # 0 is no id's hash in practice; it would only be re-hashed
    if len(missing):
        names = [ids[i] for i in missing.tolist()]
        fresh = hash_strings(names, "item_id")
        out[missing] = fresh
        if len(known) + len(names) > _ITEM_HASHES_MAX:
            known.clear()
        known.update(zip(names, fresh.tolist()))
    return out


class _Entries:
    """One kind of feature entry (categorical or numeric) of a batch of requests, before ordering.

    The sources are every request's context entries, then every row's own entries; the batch's
    entries are these in row-major order: each row's context entries, then its own, as a row's
    map lists them (:func:`~pipeline.serving.request_events.requests_events`). Names are coded
    by first appearance (``names``), so that a feature's entries are found by comparing ints.
    """

    def __init__(self):
        self.names: dict[str, int] = {}
        self.ctx_codes: list[int] = []
        self.ctx_values: list = []
        self.ctx_counts: list[int] = []  # per request
        self.own_codes: list[int] = []
        self.own_values: list = []
        self.own_counts: list[int] = []  # per row

    def add(
        self, ctx_keys: list[str], ctx_values: list, own_keys: list[str], own_values: list, counts: list[int]
    ) -> None:
        names = self.names
        self.ctx_codes += [names.setdefault(k, len(names)) for k in ctx_keys]
        self.ctx_values += ctx_values
        self.ctx_counts.append(len(ctx_keys))
        self.own_counts += counts
        if not own_keys:
            return
        self.own_values += own_values
        width = counts[0]
        if width and own_keys == own_keys[:width] * len(counts):  # every row names the same features
            self.own_codes += [names.setdefault(k, len(names)) for k in own_keys[:width]] * len(counts)
        else:
            self.own_codes += [names.setdefault(k, len(names)) for k in own_keys]

    def order(self, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(positions, rows, codes)``: each entry's position among the sources (context values,
        then own values), its row and its name's code, in row-major order."""
        n = len(self.own_counts)
        ctx = np.array(self.ctx_counts, np.int64)
        if not self.own_values:  # context entries only: each row repeats its request's
            per_row = np.repeat(ctx, sizes)
            at = _ranges(np.repeat(np.cumsum(ctx) - ctx, sizes), per_row)
        elif not self.ctx_values:  # own entries only: the sources are row-major already
            per_row = np.array(self.own_counts, np.int64)
            at = np.arange(len(self.own_values))
        else:  # two ranges per row, interleaved: its request's context entries, then its own
            own = np.array(self.own_counts, np.int64)
            per_ctx = np.repeat(ctx, sizes)
            starts, counts = np.empty(2 * n, np.int64), np.empty(2 * n, np.int64)
            starts[0::2] = np.repeat(np.cumsum(ctx) - ctx, sizes)
            starts[1::2] = len(self.ctx_values) + np.cumsum(own) - own
            counts[0::2], counts[1::2] = per_ctx, own
            per_row = per_ctx + own
            at = _ranges(starts, counts)
        rows = np.repeat(np.arange(n, dtype=np.int64), per_row)
        return at, rows, np.array(self.ctx_codes + self.own_codes, np.int64)[at]

    def name_hashes(self) -> np.ndarray:
        """Each coded name's hash as a categorical feature name."""
        return np.fromiter((_hash(k, "feature") for k in self.names), np.uint64, len(self.names))


def request_features(featurizer: Featurizer, reqs: Sequence[Request]) -> FeatureBatch:
    """The features of every candidate of ``reqs``, one row per candidate, requests one after another.

    Equal to ``featurizer.transform(requests_events([(r, r.item_ids, r.item_features) for r in
    reqs]))``; changes no state.
    """
    parts = [(r, r.item_ids, r.item_features) for r in reqs]
    sizes = np.fromiter(map(len, (r.item_ids for r in reqs)), np.int64, len(reqs))
    n = int(sizes.sum())
    events = DeferredEvents(n, lambda: requests_events(parts))
    users = np.fromiter((_hash(r.user_id, "user_id") for r in reqs), np.uint64, len(reqs))
    item = item_hashes(list(itertools.chain.from_iterable(r.item_ids for r in reqs)))
    cat, num = _Entries(), _Entries()
    for req in reqs:
        context = req.features
        ock, ocv, occ, onk, onv, onc = own_entries(req.item_features)
        if (
            context
            and (ock or onk)
            and not (context.keys().isdisjoint(ock) and context.keys().isdisjoint(onk))
        ):
            # a candidate's feature overrides the context's of the same name: rows of merged maps
            ock, ocv, occ, onk, onv, onc = own_entries([{**context, **o} for o in req.item_features])
            context = {}
        ck, cv, nk, nv = split_features(context)
        cat.add(ck, cv, ock, ocv, occ)
        num.add(nk, nv, onk, onv, onc)
    exclude = featurizer.spec.exclude
    return featurizer.assemble(
        events,
        np.repeat(users, sizes),
        item,
        _categorical(cat, sizes, exclude),
        _numeric(num, sizes, exclude),
    )


def _categorical(cat: _Entries, sizes: np.ndarray, exclude: tuple[str, ...]):
    if not cat.names:
        empty = np.zeros(0, np.uint64)
        return np.zeros(0, np.int64), empty, empty
    at, rows, codes = cat.order(sizes)
    names = cat.name_hashes()
    # the context's values are few and recur: hashed one by one; the candidates' in one pass
    values = np.fromiter((_hash(v, "value") for v in cat.ctx_values), np.uint64, len(cat.ctx_values))
    if cat.own_values:
        own = hash_repeated_strings(pa.array(cat.own_values, pa.string()), "value")
        values = np.concatenate([values, own])
    name_h = names[codes]
    keys = combine(name_h, values[at])
    if exclude:
        keep = ~np.isin(codes, [c for k, c in cat.names.items() if k in exclude])
        rows, name_h, keys = rows[keep], name_h[keep], keys[keep]
    return rows, name_h, keys


def _numeric(
    num: _Entries, sizes: np.ndarray, exclude: tuple[str, ...]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not num.names:
        return {}
    at, rows, codes = num.order(sizes)
    x = np.array(num.ctx_values + num.own_values, np.float64)[at]
    out = {}
    for name, c in num.names.items():
        if name not in exclude:
            sel = codes == c
            out[name] = (rows[sel], x[sel])
    return out
