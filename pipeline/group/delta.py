"""Model deltas: what one worker learned from a range of source offsets, as one Kafka message.

A :class:`ModelDelta` names its author (worker id and process incarnation), the source offset
ranges ``[start, end)`` per partition whose events it holds, the per-partition counts of those
events, and the change of every shared part (:mod:`pipeline.group.parts`) since the author's
previous delta. :func:`diff` computes the change between two captures; :func:`encode` and
:func:`decode` turn a delta into bytes and back: a JSON header and ``.npy`` arrays in an
uncompressed zip (``numpy.savez``), read with ``allow_pickle=False`` — never a pickle.

Examples
--------
>>> import numpy as np
>>> from pipeline.group.parts import Part
>>> base = {"m/w": Part({"z": np.zeros(4)})}
>>> live = {"m/w": Part({"z": np.array([0.0, 1.5, 0.0, -2.0])})}
>>> parts = diff(live, base, prior=None)
>>> parts["m/w"].indices["z"].tolist(), parts["m/w"].values["z"].tolist()
([1, 3], [1.5, -2.0])
>>> d = ModelDelta("w-1", "i-1", 0, {"t:0": (0, 10)}, {"t:0": {"applied": 10}}, parts, "cafe")
>>> back = decode(encode(d))
>>> back.ranges, back.parts["m/w"].values["z"].tolist()
({'t:0': (0, 10)}, [1.5, -2.0])
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.group.parts import Part, PartDelta

__all__ = ["DELTA_FORMAT", "DeltaError", "ModelDelta", "decode", "diff", "encode"]

DELTA_FORMAT = 1
_SEP = "|"


class DeltaError(ValueError):
    """A message of the updates topic that is not a readable delta."""


@dataclass
class ModelDelta:
    """One published update (see the module docstring)."""

    author: str
    incarnation: str
    seq: int
    ranges: dict[str, tuple[int, int]]
    counts: dict[str, dict[str, int]]
    parts: dict[str, PartDelta]
    config_hash: str
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts.values())


def diff(
    live: Mapping[str, Part],
    base: Mapping[str, Part],
    prior: Callable[[str, list[str]], dict[str, np.ndarray]] | None,
) -> dict[str, PartDelta]:
    """``live - base`` per part, only what changed; keyed rows new since ``base`` count from ``prior``."""
    out: dict[str, PartDelta] = {}
    for name, part in live.items():
        old = base.get(name)
        if part.ids is None:
            values, indices = {}, {}
            for key, arr in part.arrays.items():
                before = old.arrays.get(key) if old is not None else None
                flat = arr.reshape(-1)
                d = (
                    flat - before.reshape(-1)
                    if before is not None and before.shape == arr.shape
                    else flat.copy()
                )
                idx = np.flatnonzero(d)
                if len(idx):
                    values[key] = d[idx]
                    indices[key] = idx.astype(np.int32 if flat.size < 2**31 else np.int64)
            if values:
                out[name] = PartDelta(values, indices)
            continue
        if not part.ids:
            continue
        where = {k: i for i, k in enumerate(old.ids)} if old is not None and old.ids else {}
        pos = np.array([where.get(k, -1) for k in part.ids], dtype=np.int64)
        new = np.flatnonzero(pos < 0)
        fresh = prior(name, [part.ids[i] for i in new]) if len(new) and prior is not None else {}
        rows = {}
        changed = np.zeros(len(part.ids), dtype=bool)
        for key, arr in part.arrays.items():
            ref = np.zeros_like(arr, dtype=np.float64)
            seen = pos >= 0
            if old is not None and seen.any():
                ref[seen] = old.arrays[key][pos[seen]]
            if len(new) and key in fresh:
                ref[new] = fresh[key]
            d = arr.astype(np.float64) - ref
            rows[key] = d
            changed |= (d.reshape(len(part.ids), -1) != 0).any(axis=1)
        keep = np.flatnonzero(changed)
        if len(keep):
            out[name] = PartDelta({k: v[keep] for k, v in rows.items()}, ids=[part.ids[i] for i in keep])
    return out


def encode(delta: ModelDelta) -> bytes:
    """The delta as bytes (JSON header + ``.npy`` arrays in an uncompressed zip)."""
    arrays: dict[str, np.ndarray] = {}
    parts_meta = {}
    for name, part in delta.parts.items():
        parts_meta[name] = {"ids": part.ids, "arrays": sorted(part.values)}
        for key, values in part.values.items():
            arrays[f"{name}{_SEP}{key}{_SEP}v"] = np.ascontiguousarray(values)
            if key in part.indices:
                arrays[f"{name}{_SEP}{key}{_SEP}i"] = np.ascontiguousarray(part.indices[key])
    header = {
        "format": DELTA_FORMAT,
        "author": delta.author,
        "incarnation": delta.incarnation,
        "seq": delta.seq,
        "ranges": {k: list(v) for k, v in delta.ranges.items()},
        "counts": delta.counts,
        "config_hash": delta.config_hash,
        "created_ms": delta.created_ms,
        "parts": parts_meta,
    }
    arrays["__header__"] = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode(data: bytes) -> ModelDelta:
    """The delta in ``data``; :class:`DeltaError` naming what is wrong for anything else."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DeltaError(f"not a delta archive: {exc}") from None
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DeltaError(f"delta header unreadable: {exc!r}") from None
    if not isinstance(header, dict) or header.get("format") != DELTA_FORMAT:
        raise DeltaError(
            f"delta format {header.get('format') if isinstance(header, dict) else header!r} unknown"
        )
    try:
        parts = {}
        for name, meta in header["parts"].items():
            values, indices = {}, {}
            for key in meta["arrays"]:
                values[key] = arrays[f"{name}{_SEP}{key}{_SEP}v"]
                idx = arrays.get(f"{name}{_SEP}{key}{_SEP}i")
                if idx is not None:
                    if idx.dtype.kind not in "iu" or idx.shape != values[key].shape:
                        raise DeltaError(f"part {name!r} array {key!r}: indices do not match the values")
                    indices[key] = idx
            ids = meta["ids"]
            if ids is not None:
                if any(len(v) != len(ids) for v in values.values()):
                    raise DeltaError(f"part {name!r}: {len(ids)} ids but rows of another length")
                ids = [str(i) for i in ids]
            elif set(indices) != set(values):
                raise DeltaError(f"fixed part {name!r} lacks indices")
            parts[name] = PartDelta(values, indices, ids)
        ranges = {str(k): (int(v[0]), int(v[1])) for k, v in header["ranges"].items()}
        if any(b < a for a, b in ranges.values()):
            raise DeltaError(f"delta ranges go backwards: {ranges}")
        return ModelDelta(
            author=str(header["author"]),
            incarnation=str(header["incarnation"]),
            seq=int(header["seq"]),
            ranges=ranges,
            counts={str(k): {str(f): int(n) for f, n in v.items()} for k, v in header["counts"].items()},
            parts=parts,
            config_hash=str(header["config_hash"]),
            created_ms=int(header["created_ms"]),
        )
    except DeltaError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DeltaError(f"delta header incomplete: {exc!r}") from None
