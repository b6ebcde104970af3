"""Memory keys: a dense representation of each event and its SimHash bucket in every table.

Three steps, each vectorised over a micro-batch:

1. :func:`hashed_keys` (learners without a hidden layer): the event's hashed sparse features
   folded into ``key_dim`` dimensions with a signed count sketch. Coordinate and sign come from
   the feature key itself (a seeded multiplication), so no per-feature table is kept and unseen
   features need nothing. A learner with ``representation(batch)`` (the neural ranker's last
   hidden layer) supplies its own keys instead.
2. :class:`KeyCenter`: keys minus their running mean. Hyperplanes through the origin split
   centred data evenly; a hidden layer of ReLUs (all keys in one orthant) would otherwise fall
   into a few buckets.
3. :class:`SimHash`: per table, ``L`` Gaussian random hyperplanes; the signs of the projections
   are the ``L`` bits of the bucket id (Charikar's random-projection LSH: two keys at angle θ
   share a bit with probability ``1 - θ/π``).

Examples
--------
>>> import numpy as np
>>> lsh = SimHash(dim=4, bits=3, tables=2, seed=0)
>>> keys = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.01, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
>>> ids = lsh.buckets(keys)
>>> ids.shape, bool((ids[0] == ids[1]).all()), bool((ids[0] + ids[2] == 7).all())
((3, 2), True, True)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.features import FeatureBatch
from pipeline.hashing import combine, hash_one, hash_strings
from pipeline.learners.checks import number

__all__ = [
    "KeyCenter",
    "SimHash",
    "StackedProduct",
    "check_key_fields",
    "field_hashes",
    "field_keys",
    "hashed_keys",
    "item_keys",
    "one_thread_matmul",
]

#: fields an event always has (besides its categorical features)
_ID_FIELDS = ("user_id", "item_id")

# OpenBLAS runs a product on one thread while m·n·k is at most 4 · 65536; its threads cost far
# more than a micro-batch's arithmetic on a busy machine, so products are cut into stacks below it
_ONE_THREAD_WORK = 1 << 18


def _multiplier(seed: int) -> np.uint64:
    return np.uint64(hash_one(str(seed), namespace="error_memory.key") | 1)


def hashed_keys(batch: FeatureBatch, key_dim: int, seed: int = 0) -> np.ndarray:
    """Signed count sketch of every row's hashed features: float32 ``[len(batch), key_dim]``.

    Feature keys are already uniform 64-bit hashes, so one multiplication by a seeded odd constant
    re-mixes them, and its high half picks coordinate and sign. The bias feature is included: it
    adds the same vector to every key, which centring (:class:`KeyCenter`) removes together with
    the mean of the other common features.
    """
    n = len(batch)
    if n == 0:
        return np.zeros((0, key_dim), np.float32)
    h = batch.keys * _multiplier(seed)  # wraps modulo 2**64 (array integer ops do not warn)
    # multiply-shift range reduction of the high half onto 2·key_dim cells: cell // 2 is the
    # coordinate, cell % 2 the sign, so positive and negative parts land in adjacent cells
    cells = 2 * key_dim
    cell = (((h >> np.uint64(32)) * np.uint64(cells)) >> np.uint64(32)).view(np.int64)
    cell += np.repeat(np.arange(0, n * cells, cells), np.diff(batch.indptr))
    parts = np.bincount(cell, weights=batch.values, minlength=n * cells).reshape(n, key_dim, 2)
    return np.subtract(parts[..., 0], parts[..., 1], dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _item_multipliers(dim: int, seed: int) -> np.ndarray:
    return np.array(
        [hash_one(f"{seed}:{d}", namespace="error_memory.item") | 1 for d in range(dim)], np.uint64
    )


def item_keys(item_hash: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """A seeded random ±1 vector per item id: float32 ``[len(item_hash), dim]``.

    Coordinate d is the sign of the item hash times the d-th seeded odd constant (its top bit), so
    two items' vectors are independent and nearly orthogonal, and one item always gets the same one.
    Added to a key with a large weight, it makes the SimHash buckets of an event mostly those of its
    item: the memory then pools the errors of every event showing that item (item-level drift).
    """
    x = np.asarray(item_hash, np.uint64)[:, None] * _item_multipliers(int(dim), int(seed))
    return np.subtract(1.0, (x >> np.uint64(63)).astype(np.float32) * 2.0, dtype=np.float32)


def check_key_fields(key_fields: Mapping[str, float] | None) -> dict[str, float]:
    """Validate ``{field: weight}`` (a field is ``user_id``, ``item_id``, a categorical feature, or
    a cross ``"a:b"`` of two of them); returns a plain dict with float weights, zero weights dropped."""
    if key_fields is None:
        return {}
    if not isinstance(key_fields, Mapping):
        raise ValueError(f"key_fields must be a table of field name -> weight, got {key_fields!r}")
    out: dict[str, float] = {}
    for name, weight in key_fields.items():
        parts = name.split(":") if isinstance(name, str) else []
        if not parts or len(parts) > 2 or not all(p.strip() == p and p for p in parts):
            raise ValueError(
                f"key_fields: {name!r} is not a field name ('item_id', 'category') or a cross of two "
                "('user_id:category')"
            )
        weight = number(f"key_fields[{name!r}]", weight, 0.0)
        if weight:
            out[name] = weight
    return out


def field_hashes(batch: FeatureBatch, field: str) -> np.ndarray:
    """A stable 64-bit hash of each event's value of ``field`` (or of the cross ``"a:b"``).

    ``user_id`` and ``item_id`` are the featurizer's id hashes; a categorical feature hashes like
    the featurizer's key of that feature; an event without the feature gets the feature's
    "missing" hash (one value for all such events). A cross combines its two parts.

    >>> from pipeline.events import decode_json, EventRules
    >>> from pipeline.features import Featurizer
    >>> rows = [b'{"event_id":"e%d","ts":1,"user_id":"u%d","item_id":"i","label":1,'
    ...         b'"features":{"category":"c%d"}}' % (i, i % 2, i % 3) for i in range(12)]
    >>> fb = Featurizer().transform(decode_json(rows, EventRules())[0])
    >>> h = field_hashes(fb, "user_id:category")  # six (user, category) pairs, repeating after six events
    >>> len(set(h.tolist())), bool((h[:6] == h[6:]).all()), len(set(field_hashes(fb, "category").tolist()))
    (6, True, 3)
    """
    parts = field.split(":")
    if len(parts) == 2:
        return combine(field_hashes(batch, parts[0]), field_hashes(batch, parts[1]))
    if field == "user_id":
        return batch.user_hash
    if field == "item_id":
        return batch.item_hash
    name_h, missing = _name_hashes(field)
    out = np.full(len(batch), missing)
    if batch.categorical is not None:  # the featurizer's keys of this feature, if it kept the feature
        rows, names, keys = batch.categorical
        sel = names == name_h
        if sel.any():
            out[rows[sel]] = keys[sel]
            return out
    col = batch.events.column("cat_features")  # e.g. a feature the featurizer was told to exclude
    if len(col.keys):
        sel = np.asarray(pc.equal(col.keys, field), dtype=bool)
        if sel.any():
            offsets = np.asarray(col.offsets, dtype=np.int64)
            rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(offsets))[sel]
            values = _distinct_hashes(col.items.filter(pa.array(sel)))
            out[rows] = combine(np.full(len(rows), name_h), values)
    return out


@functools.lru_cache(maxsize=256)
def _name_hashes(field: str) -> tuple[np.uint64, np.uint64]:
    """The featurizer's hash of a feature name, and the key of the feature's "missing" value."""
    name_h = np.uint64(hash_one(field, "feature"))
    return name_h, combine(np.array([name_h]), np.array([0], np.uint64))[0]


@functools.lru_cache(maxsize=1 << 16)
def _value_hash(value: str | None) -> int:
    return 0 if value is None else hash_one(value, "value")


def _distinct_hashes(values: pa.Array) -> np.ndarray:
    """``hash_strings(values, "value")``, hashing each distinct value once (and remembering it).

    A categorical field has few values, and hashing a short array has a fixed cost of ~60 µs, so
    the distinct values of a batch are looked up in a cache instead.
    """
    coded = pc.dictionary_encode(values, null_encoding="encode")
    if len(coded.dictionary) > 256:  # an id-like field: the vectorised hash is cheaper
        return hash_strings(values, "value")
    table = np.array([_value_hash(v) for v in coded.dictionary.to_pylist()], np.uint64)
    return table[coded.indices.to_numpy()]


def field_keys(batch: FeatureBatch, key_fields: Mapping[str, float], dim: int, seed: int = 0) -> np.ndarray:
    """``Σ_f weight_f · item_keys(field_hashes(batch, f))``: float32 ``[len(batch), dim]``.

    ``item_id`` uses the item hash itself, so ``{"item_id": w}`` gives the same keys as before
    fields other than the item could be named.
    """
    out = np.zeros((len(batch), dim), np.float32)
    for field, weight in key_fields.items():
        out += np.float32(weight) * item_keys(field_hashes(batch, field), dim, seed)
    return out


class StackedProduct:
    """``x @ b`` for micro-batches ``x``, in work arrays reused from call to call.

    The product is cut into a stack of products small enough for OpenBLAS to keep on one thread,
    and the arrays are kept: a fresh temporary of a few hundred KB is a fresh mmap whose page
    faults cost more than the arithmetic (SimHash of 2,000 keys: 660 µs with fresh arrays, 130 µs
    with reused ones on the benchmark machine). :meth:`input` hands out the rows to fill, :meth:`run`
    multiplies them; the result is a view, valid until the next call.
    """

    def __init__(self, b: np.ndarray):
        self.b = b
        self.rows = max(1, _ONE_THREAD_WORK // max(1, b.size))
        self._in = np.zeros((0, b.shape[0]), b.dtype)
        self._out = np.zeros((0, b.shape[1]), b.dtype)
        self._n = self._stacks = self._per = 0

    def input(self, n: int) -> np.ndarray:
        """The ``[n, b.shape[0]]`` rows of the next product, for the caller to fill."""
        self._stacks = max(1, -(-n // self.rows))
        self._per = n if self._stacks == 1 else self.rows
        padded = self._stacks * self._per
        if len(self._in) < padded:
            self._in = np.zeros((padded, self.b.shape[0]), self.b.dtype)
            self._out = np.zeros((padded, self.b.shape[1]), self.b.dtype)
        self._in[n:padded] = 0
        self._n = n
        return self._in[:n]

    def run(self) -> np.ndarray:
        """``input @ b``, ``[n, b.shape[1]]``."""
        padded = self._stacks * self._per
        d, m = self.b.shape
        out = self._out[:padded].reshape(self._stacks, self._per, m)
        np.matmul(self._in[:padded].reshape(self._stacks, self._per, d), self.b, out=out)
        return self._out[: self._n]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.input(len(x))[:] = x
        return self.run()


def one_thread_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` as a stack of products small enough for OpenBLAS to keep on one thread (a new array)."""
    return StackedProduct(b)(a).copy()


class SimHash:
    """``tables`` independent families of ``bits`` random hyperplanes over ``dim``-dimensional keys.

    The hyperplanes are drawn from ``seed`` and ``dim`` only, so a snapshot needs to keep the
    seed, not the matrix.
    """

    def __init__(self, dim: int, bits: int, tables: int, seed: int = 0):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.bits, self.tables, self.seed = dim, bits, tables, seed
        rng = np.random.default_rng(np.random.SeedSequence([seed, dim, bits, tables]))
        self._project = StackedProduct(rng.standard_normal((dim, tables * bits), dtype=np.float32))
        # packing the sign bits is a product too: column k·L + l of the signs adds 2**l to table k
        pack = np.zeros((tables * bits, tables), np.float32)
        pack[np.arange(tables * bits), np.repeat(np.arange(tables), bits)] = np.tile(
            np.ldexp(1.0, np.arange(bits)), tables
        )
        self._pack = StackedProduct(pack)

    def buckets(self, keys: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """Bucket id of every key (minus ``offset``, if given) in every table: int64 ``[n, tables]``."""
        keys = np.asarray(keys)
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must have shape (n, {self.dim}), got {keys.shape}")
        rows = self._project.input(len(keys))
        if offset is None:
            rows[:] = keys
        else:
            np.subtract(keys, np.asarray(offset, np.float32), out=rows, casting="unsafe")
        projections = self._project.run()
        np.greater(projections, 0, out=self._pack.input(len(keys)), casting="unsafe")
        return self._pack.run().astype(np.int64)


class KeyCenter:
    """Running mean of the keys (decayed like the memory) and its subtraction.

    The mean absorbs the keys of each learned batch (after decaying by ``decay``); a key is
    centred with the mean *before* its own batch, as it was served.
    """

    def __init__(self) -> None:
        self.total = np.zeros(0)
        self.weight = 0.0

    @property
    def mean(self) -> np.ndarray | None:
        """The running mean (None before the first update)."""
        return None if self.weight == 0.0 else self.total / self.weight

    def apply(self, keys: np.ndarray) -> np.ndarray:
        mean = self.mean
        return keys if mean is None else keys - mean.astype(keys.dtype)

    def update(self, keys: np.ndarray, decay: float = 1.0, weights: np.ndarray | None = None) -> None:
        """Decay, then absorb ``keys`` (each with its example weight; None: all 1)."""
        if len(keys) == 0:
            return
        if self.total.shape != (keys.shape[1],):
            self.total, self.weight = np.zeros(keys.shape[1]), 0.0
        if weights is None:
            self.total = self.total * decay + np.einsum("nd->d", keys)  # einsum: no BLAS, no strided reduce
            self.weight = self.weight * decay + len(keys)
        else:
            self.total = self.total * decay + np.einsum("n,nd->d", weights, keys)
            self.weight = self.weight * decay + float(weights.sum())

    def arrays(self) -> dict[str, np.ndarray]:
        return {"key_sum": self.total.copy(), "key_weight": np.array([self.weight])}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.total = np.array(arrays["key_sum"], dtype=np.float64).ravel()
        self.weight = float(np.asarray(arrays["key_weight"]).ravel()[0])
