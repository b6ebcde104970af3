"""Stable, vectorised hashing of strings.

Snapshots outlive processes, so every id and feature must map to the same slot in every
process, on every machine and in every Python version. Python's built-in ``hash`` is salted per
process and is never used. The hash is fixed and documented here:

    h = fmix64(FNV-1a-64(utf8(namespace) + b"\\x1f" + utf8(value)))

FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) runs byte-wise over the UTF-8
bytes; MurmurHash3's 64-bit finaliser ``fmix64`` then mixes the result so that its low bits are
as good as its high bits (slots are taken as ``h & (2**bits - 1)``). The namespace (a field or
feature name) keeps ``user_id=42`` and ``item_id=42`` apart.

The vectorised kernel walks Arrow's offsets/data buffers column-wise: one numpy pass per byte
position, over all strings at once, never a Python loop over strings.

Examples
--------
>>> hex(fnv1a64(b""))
'0xcbf29ce484222325'
>>> hex(fnv1a64(b"a"))
'0xaf63dc4c8601ec8c'
>>> import pyarrow as pa
>>> h = hash_strings(pa.array(["42", "é", None]), namespace="user_id")
>>> bool(h[0] == hash_one("42", namespace="user_id")), bool(h[1] == hash_one("é", namespace="user_id"))
(True, True)
>>> int(h[2])
0
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

__all__ = [
    "FNV_OFFSET",
    "FNV_PRIME",
    "combine",
    "fmix64",
    "fnv1a64",
    "hash_one",
    "hash_repeated_strings",
    "hash_strings",
]

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
_SEP = b"\x1f"


def fnv1a64(data: bytes, state: int = FNV_OFFSET) -> int:
    """Pure-Python FNV-1a 64 (the reference the vectorised kernel is tested against)."""
    for byte in data:
        state = ((state ^ byte) * FNV_PRIME) & _MASK
    return state


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    h ^= h >> 33
    return h


@functools.lru_cache(maxsize=1024)
def _seed(namespace: str) -> int:
    """FNV state after the namespace and the separator (a handful of namespaces, hashed once)."""
    return fnv1a64(namespace.encode("utf-8") + _SEP)


def hash_one(value: str, namespace: str = "") -> int:
    """Hash one string exactly as :func:`hash_strings` does (slow; for tests and single keys)."""
    return _fmix64_int(fnv1a64(value.encode("utf-8"), fnv1a64(namespace.encode("utf-8") + _SEP)))


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser over a uint64 array (returns a new array)."""
    h = h.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Order-dependent combination of two hash arrays (for crossed features)."""
    with np.errstate(over="ignore"):
        return fmix64(a * np.uint64(0x9E3779B97F4A7C15) + b)


def hash_repeated_strings(values: pa.Array, namespace: str = "") -> np.ndarray:
    """:func:`hash_strings` for arrays with few distinct values (feature names and values).

    Hashes each distinct string once and gathers; the result is identical to ``hash_strings``.

    >>> import pyarrow as pa
    >>> a = pa.array(["ios", "web", "ios", None])
    >>> bool((hash_repeated_strings(a, "v") == hash_strings(a, "v")).all())
    True
    """
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == values.null_count:
        return np.zeros(len(values), np.uint64)
    if len(values) < 256:  # encoding costs more than it saves on a few values
        return hash_strings(values, namespace)
    encoded = pc.dictionary_encode(values)
    distinct = hash_strings(encoded.dictionary, namespace)
    indices = encoded.indices
    if not indices.null_count:
        return distinct[indices.to_numpy()]
    out = distinct[np.asarray(indices.fill_null(0))]
    out[~np.asarray(indices.is_valid())] = 0
    return out


def hash_strings(values: pa.Array | pa.ChunkedArray | list[str], namespace: str = "") -> np.ndarray:
    """Hash every string of an Arrow string array; nulls hash to 0.

    Parameters
    ----------
    values
        Arrow ``string``/``large_string`` array (or chunked array, or a list of str).
    namespace
        Field name mixed in before the value.

    Returns
    -------
    numpy.ndarray
        uint64 hashes, one per element.
    """
    if isinstance(values, list):
        values = pa.array(values, type=pa.string())
    if isinstance(values, pa.ChunkedArray):
        parts = [hash_strings(chunk, namespace) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if pa.types.is_large_string(values.type):
        offset_dtype = np.int64
    elif pa.types.is_string(values.type):
        offset_dtype = np.int32
    else:
        raise TypeError(f"hash_strings needs an Arrow string array, got {values.type}")
    n = len(values)
    if n == 0:
        return np.zeros(0, np.uint64)
    _, off_buf, data_buf = values.buffers()
    offsets = np.frombuffer(off_buf, dtype=offset_dtype, count=values.offset + n + 1)[values.offset :]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    h = np.full(n, _seed(namespace), dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    max_len = int(lengths.max()) if n else 0
    if max_len * n <= 2 * int(lengths.sum()) + n:
        # Lengths alike (ids of one format): gather the bytes into a [position, string] matrix
        # once, then step every string through each position (masked past the shortest string).
        if max_len:
            at = np.arange(max_len)[:, None]
            grid = data[np.minimum(starts[None, :] + at, len(data) - 1)].astype(np.uint64)
            shortest = int(lengths.min())
            with np.errstate(over="ignore"):
                for j in range(shortest):
                    h ^= grid[j]
                    h *= prime
                if shortest < max_len:
                    live = at[shortest:] < lengths[None, :]
                    for j in range(shortest, max_len):
                        h = np.where(live[j - shortest], (h ^ grid[j]) * prime, h)
        out = fmix64(h)
        if values.null_count:
            out[~np.asarray(values.is_valid())] = 0
        return out
    # Strings sorted by length let each byte position touch only the strings still long enough.
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    sorted_start = starts[order]
    hs = h[order]
    with np.errstate(over="ignore"):
        for j in range(max_len):
            alive = int(np.searchsorted(-sorted_len, -j, side="left"))  # count of lengths > j
            if alive == 0:
                break
            byte = data[sorted_start[:alive] + j].astype(np.uint64)
            hs[:alive] = (hs[:alive] ^ byte) * prime
    h[order] = hs
    out = fmix64(h)
    if values.null_count:
        out[~np.asarray(values.is_valid())] = 0
    return out
