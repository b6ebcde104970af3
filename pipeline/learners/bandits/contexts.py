"""Dense bandit contexts from a micro-batch's hashed features (feature hashing with signs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.features import BIAS_KEY, FeatureBatch
from pipeline.hashing import combine, fmix64, hash_one, hash_strings

__all__ = ["action_vectors", "context_vectors"]

_CONTEXT_SALT = np.uint64(hash_one("context", namespace="bandit"))
_ACTION_SALT = np.uint64(hash_one("action", namespace="bandit"))


def context_vectors(
    batch: FeatureBatch, dim: int, exclude: Sequence[str] = (), include_user: bool = False
) -> np.ndarray:
    """Dense contexts ``[n, dim]`` from a batch's hashed features.

    Slot 0 is the bias (1.0). Every other feature of the row (categorical ``name=value`` with value
    1, numeric features with their standardised value, configured crosses) is folded into slots
    ``1..dim-1`` by its hashed key, with a hashed sign so that collisions cancel on average
    (feature hashing, Weinberger et al. 2009). The item's own id is left out: the arm is the item.
    Features that describe the item rather than the context (price, cuisine) should be named in
    ``exclude``; crosses that involve ``item_id`` cannot be told apart and should not be configured.

    Parameters
    ----------
    batch
        The featurised micro-batch (not modified).
    dim
        Context dimension, >= 2.
    exclude
        Feature names (categorical or numeric) to leave out.
    include_user
        Fold the user-id hash in as well (one random ±1 slot per user; useful only with many slots).

    Examples
    --------
    >>> from pipeline.events import decode_json, EventRules
    >>> from pipeline.features import Featurizer, FeatureSpec
    >>> events, _ = decode_json([b'{"event_id":"e","ts":1,"user_id":"u","item_id":"i","label":1,'
    ...                          b'"features":{"device":"ios"}}'], EventRules())
    >>> x = context_vectors(Featurizer(FeatureSpec()).transform(events), dim=8)
    >>> x.shape, float(x[0, 0]), float(np.abs(x[0, 1:]).sum())
    ((1, 8), 1.0, 1.0)
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2 to build contexts from features, got {dim}")
    n = len(batch)
    out = np.zeros((n, dim))
    out[:, 0] = 1.0
    rows = batch.row_of_nnz
    keys = batch.keys
    drop = (keys == BIAS_KEY) | (keys == batch.item_hash[rows])
    if not include_user:
        drop |= keys == batch.user_hash[rows]
    if len(exclude):
        drop |= np.isin(keys, _feature_keys(batch, exclude))
    keep = ~drop
    h = fmix64(keys[keep] ^ _CONTEXT_SALT)
    slot = 1 + (h % np.uint64(dim - 1)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
    flat = rows[keep] * dim + slot
    out += np.bincount(flat, weights=sign * batch.values[keep], minlength=n * dim).reshape(n, dim)
    return out


def action_vectors(batch: FeatureBatch, dim: int, names: Sequence[str]) -> np.ndarray:
    """Dense item-feature vectors ``[n, dim]``: the named features of each event, hashed with signs.

    The complement of :func:`context_vectors` for shared-parameter policies (:mod:`.hybrid`):
    only the features that describe the event's item (``names``: price, cuisine, ...) are kept,
    folded into ``dim`` slots like the context's (no bias slot; the policy crosses them with the
    context, bias included). An event whose item has none of them gets a zero row.

    Examples
    --------
    >>> from pipeline.events import decode_json, EventRules
    >>> from pipeline.features import Featurizer, FeatureSpec
    >>> events, _ = decode_json([b'{"event_id":"e","ts":1,"user_id":"u","item_id":"i","label":1,'
    ...                          b'"features":{"device":"ios","cuisine":"thai"}}'], EventRules())
    >>> a = action_vectors(Featurizer(FeatureSpec()).transform(events), dim=4, names=["cuisine"])
    >>> a.shape, float(np.abs(a).sum())
    ((1, 4), 1.0)
    """
    if dim < 1:
        raise ValueError(f"action_dim must be >= 1, got {dim}")
    n = len(batch)
    if not len(names):
        return np.zeros((n, dim))
    keep = np.isin(batch.keys, _feature_keys(batch, names))
    h = fmix64(batch.keys[keep] ^ _ACTION_SALT)
    slot = (h % np.uint64(dim)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
    flat = batch.row_of_nnz[keep] * dim + slot
    return np.bincount(flat, weights=sign * batch.values[keep], minlength=n * dim).reshape(n, dim)


def _feature_keys(batch: FeatureBatch, names: Sequence[str]) -> np.ndarray:
    """The featurizer's keys of the named features in this batch (see pipeline.features)."""
    names_arr = pa.array(list(names), pa.string())
    cat = batch.events.column("cat_features")
    sel = pc.is_in(cat.keys, value_set=names_arr)
    cat_keys = combine(
        hash_strings(cat.keys.filter(sel), "feature"), hash_strings(cat.items.filter(sel), "value")
    )
    num_keys = np.array([hash_one(name, "numeric") for name in names], dtype=np.uint64)
    return np.concatenate([cat_keys, num_keys])
