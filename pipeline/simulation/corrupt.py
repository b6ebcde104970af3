"""Invalid records injected into a simulated stream, for demos and tests of dead-lettering.

Each invalid record is a corrupted copy of a valid event of the same block (its ``event_id``, when
it has one, starts with ``bad-``), inserted at a random place *between* the valid events, so the
valid events and their numbering do not depend on the injection. JSON lines get every kind below;
Arrow batches (and so Parquet) only the kinds that keep the column types valid (``ARROW_KINDS``).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "ARROW_KINDS",
    "JSON_KINDS",
    "injected",
    "insert_rows",
    "invalid_count",
    "invalid_json",
    "invalid_rows",
]

ARROW_KINDS = ("nan_label", "bad_propensity", "unknown_event_type", "missing_field", "negative_position")
JSON_KINDS = (*ARROW_KINDS, "malformed_json", "wrong_type", "bad_timestamp", "not_an_object")
_REQUIRED = ("event_id", "ts", "user_id", "item_id", "label")
_BAD_PROPENSITY = (0.0, -0.25, 1.5)


def invalid_count(rng: np.random.Generator, n_valid: int, fraction: float) -> int:
    """How many invalid records to add to ``n_valid`` valid ones for an expected share ``fraction``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"invalid_fraction must be in [0, 1), got {fraction}")
    return int(rng.binomial(n_valid, fraction / (1.0 - fraction))) if fraction > 0 and n_valid else 0


def _corrupt(row: dict, kind: str, rng: np.random.Generator) -> dict:
    """Break one field of ``row`` (a decoded event dict, modified in place and returned)."""
    if row.get("event_id") is not None:
        row["event_id"] = "bad-" + row["event_id"]
    if kind == "nan_label":
        row["label"] = float("nan")
    elif kind == "bad_propensity":
        row["propensity"] = _BAD_PROPENSITY[rng.integers(len(_BAD_PROPENSITY))]
    elif kind == "unknown_event_type":
        row["event_type"] = "hover"
    elif kind == "missing_field":
        row[_REQUIRED[rng.integers(len(_REQUIRED))]] = None
    elif kind == "negative_position":
        row["position"] = -1
    elif kind == "wrong_type":
        row["user_id"] = 12.5  # a float id: no rule accepts it (integers are ids)
    elif kind == "bad_timestamp":
        row["ts"] = "yesterday"
    return row


def invalid_rows(batch: pa.RecordBatch, m: int, rng: np.random.Generator) -> pa.RecordBatch:
    """``m`` type-valid but semantically invalid rows copied from random rows of ``batch``."""
    templates = batch.take(pa.array(rng.integers(batch.num_rows, size=m), type=pa.int64())).to_pylist()
    kinds = rng.integers(len(ARROW_KINDS), size=m)
    rows = [_corrupt(r, ARROW_KINDS[k], rng) for r, k in zip(templates, kinds.tolist())]
    return pa.RecordBatch.from_pylist(rows, schema=batch.schema)


def invalid_json(batch: pa.RecordBatch, m: int, rng: np.random.Generator) -> list[bytes]:
    """``m`` invalid JSON records (every kind of :data:`JSON_KINDS`) copied from random rows of ``batch``."""
    templates = batch.take(pa.array(rng.integers(batch.num_rows, size=m), type=pa.int64())).to_pylist()
    kinds = rng.integers(len(JSON_KINDS), size=m)
    out = []
    for row, k in zip(templates, kinds.tolist()):
        kind = JSON_KINDS[k]
        row = {key: v for key, v in _corrupt(row, kind, rng).items() if v is not None}
        # the stdlib writes NaN as the bare literal NaN, which is what a buggy producer would send
        text = json.dumps(row, separators=(",", ":")).encode()
        if kind == "malformed_json":
            text = text[: int(rng.integers(1, len(text) - 1))]
        elif kind == "not_an_object":
            text = b"[" + text + b"]"
        out.append(text)
    return out


def injected(batch: pa.RecordBatch) -> np.ndarray:
    """Which rows of ``batch`` are injected invalid records: ``event_id`` null or ``bad-...``."""
    ids = batch.column("event_id")
    return pc.or_kleene(pc.is_null(ids), pc.starts_with(ids, "bad-")).to_numpy(zero_copy_only=False)


def insert_rows(n_valid: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Positions (in the merged sequence of ``n_valid + m``) at which the ``m`` invalid records go."""
    return np.sort(rng.choice(n_valid + m, size=m, replace=False)) if m else np.zeros(0, np.int64)
