"""Columnar records (Parquet, CSV, Arrow's JSON reader): vectorised validation with pyarrow.compute."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.events.candidates import arrow_candidates, mark_inconsistent_candidates
from pipeline.events.checks import (
    _TS_DETAIL,
    _check_features,
    _check_ts,
    _Invalid,
    _map_array,
    _mark_propensity_range,
    _mark_unknown_event_types,
)
from pipeline.events.columns import normalize_columns
from pipeline.events.schema import (
    BAD_TIMESTAMP,
    EVENT_SCHEMA,
    MISSING_FIELD,
    NON_FINITE,
    OUT_OF_RANGE,
    WRONG_TYPE,
    DeadLetter,
    EventBatch,
    EventRules,
)
from pipeline.events.time_units import to_milliseconds


def _numpy(col: pa.Array, type_: pa.DataType, fill) -> np.ndarray:
    """``col`` as a numpy array of ``type_``, nulls as ``fill``.

    Calls Arrow's compute functions only when needed: each costs microseconds of dispatch,
    which a micro-batch pays per column.
    """
    if col.type != type_:
        col = col.cast(type_)
    if col.null_count:
        col = col.fill_null(fill)
    return col.to_numpy(zero_copy_only=False)


def _as_string(col: pa.Array) -> pa.Array:
    return col if col.type == pa.string() else col.cast(pa.string())


def _arrow_required_str(batch: pa.RecordBatch, name: str, inv: _Invalid) -> pa.Array:
    n = batch.num_rows
    if name not in batch.schema.names:
        inv.mark(np.ones(n, bool), MISSING_FIELD, f"missing required field {name!r}")
        return pa.nulls(n, pa.string())
    col = batch.column(name)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        inv.mark(np.ones(n, bool), WRONG_TYPE, f"field {name!r} must be a string, got column type {col.type}")
        return pa.nulls(n, pa.string())
    col = _as_string(col)
    if col.null_count:
        inv.mark(np.asarray(col.is_null()), MISSING_FIELD, f"missing required field {name!r}")
    return col


def _arrow_number(batch, name, inv, required: bool) -> tuple[np.ndarray, np.ndarray]:
    n = batch.num_rows
    if name not in batch.schema.names or pa.types.is_null(batch.column(name).type):
        if required:
            inv.mark(np.ones(n, bool), MISSING_FIELD, f"missing required field {name!r}")
        return np.zeros(n), np.zeros(n, bool)
    col = batch.column(name)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        inv.mark(np.ones(n, bool), WRONG_TYPE, f"field {name!r} must be a number, got column type {col.type}")
        return np.zeros(n), np.zeros(n, bool)
    present = np.asarray(col.is_valid()) if col.null_count else np.ones(n, bool)
    if required and col.null_count:
        inv.mark(~present, MISSING_FIELD, f"missing required field {name!r}")
    vals = _numpy(col, pa.float64(), 0.0)
    inv.mark(
        present & ~np.isfinite(vals),
        NON_FINITE,
        lambda i: f"field {name!r} must be finite, got {float(vals[i])!r}",
    )
    return vals, present


_PER_MS = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}


def _arrow_ts(batch, inv, unit: str) -> np.ndarray:
    n = batch.num_rows
    if "ts" not in batch.schema.names:
        inv.mark(np.ones(n, bool), MISSING_FIELD, "missing required field 'ts'")
        return np.zeros(n, np.int64)
    col = batch.column("ts")
    if col.null_count:
        inv.mark(np.asarray(col.is_null()), MISSING_FIELD, "missing required field 'ts'")
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        # the stored integer is the UTC instant (for zone-less values: read as UTC); floor to ms
        if pa.types.is_date32(col.type):
            col, per_ms = col.cast(pa.date64()), 1
        else:
            per_ms = 1 if pa.types.is_date64(col.type) else _PER_MS[col.type.unit]
        raw = _numpy(col.view(pa.int64()) if col.null_count == 0 else col.cast(pa.int64()), pa.int64(), 0)
        out = raw * 1000 if per_ms < 1 else raw // per_ms
        inv.mark(out < 0, BAD_TIMESTAMP, lambda i: f"{_TS_DETAIL}; got a time before 1970: {col[i]}")
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        raw = _numpy(col, pa.int64() if pa.types.is_integer(col.type) else pa.float64(), 0)
        out = to_milliseconds(raw, unit)
        inv.mark(raw < 0, BAD_TIMESTAMP, lambda i: f"{_TS_DETAIL}; got negative {raw[i].item()}")
        inv.mark(out < 0, BAD_TIMESTAMP, lambda i: f"{_TS_DETAIL}; {raw[i].item()} ({unit}) is out of range")
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        objs = [{"ts": v} for v in col.to_pylist()]
        return _check_ts(objs, inv, unit)
    else:
        inv.mark(np.ones(n, bool), BAD_TIMESTAMP, f"{_TS_DETAIL}; got column type {col.type}")
        return np.zeros(n, np.int64)
    return np.ascontiguousarray(out, dtype=np.int64)


def _arrow_optional_str(batch, name, inv) -> pa.Array:
    n = batch.num_rows
    if name not in batch.schema.names:
        return pa.nulls(n, pa.string())
    col = batch.column(name)
    if pa.types.is_null(col.type):
        return pa.nulls(n, pa.string())
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        inv.mark(np.ones(n, bool), WRONG_TYPE, f"field {name!r} must be a string, got column type {col.type}")
        return pa.nulls(n, pa.string())
    return _as_string(col)


def _struct_to_maps(col: pa.StructArray, n: int, inv: _Invalid) -> tuple[pa.MapArray, pa.MapArray]:
    """Turn a struct column (one child per feature) into categorical and numeric maps, vectorised."""
    cat_children, num_children = [], []
    for i in range(col.type.num_fields):
        f = col.type.field(i)
        child = col.field(i)
        if col.null_count:
            child = pc.if_else(col.is_valid(), child, pa.nulls(n, child.type))
        if pa.types.is_dictionary(f.type):
            child = child.dictionary_decode()
            f = pa.field(f.name, child.type)
        if pa.types.is_boolean(f.type):
            child, f = pc.if_else(child, "true", "false"), pa.field(f.name, pa.string())
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            cat_children.append((f.name, _as_string(child)))
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            if child.type != pa.float64():
                child = child.cast(pa.float64())
            vals = _numpy(child, pa.float64(), 0.0)
            inv.mark(
                (np.asarray(child.is_valid()) if child.null_count else True) & ~np.isfinite(vals),
                NON_FINITE,
                lambda r, name=f.name, vals=vals: f"feature {name!r} must be finite, got {float(vals[r])!r}",
            )
            num_children.append((f.name, child))
        elif not pa.types.is_null(f.type):
            inv.mark(
                np.asarray(child.is_valid()),
                WRONG_TYPE,
                f"feature {f.name!r} must be a string or a number, got {_arrow_kind(f.type)}",
            )
    return _children_to_map(cat_children, n, pa.string()), _children_to_map(num_children, n, pa.float64())


def _children_to_map(children: list[tuple[str, pa.Array]], n: int, value_type) -> pa.MapArray:
    k = len(children)
    if k == 0:
        return pa.MapArray.from_arrays(
            pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()), pa.array([], value_type)
        )
    # element (row r, child c) sits at c*n + r in the child-major concatenation
    flat = np.arange(k)[None, :] * n + np.arange(n)[:, None]
    child = np.broadcast_to(np.arange(k, dtype=np.int32), (n, k))
    if any(c.null_count for _, c in children):
        valid = np.stack([np.asarray(c.is_valid()) for _, c in children], axis=1)  # n x k, row-major
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(valid.sum(axis=1), out=offsets[1:])
        flat, child = flat[valid], child[valid]
    else:  # every row has every feature: no masks to build
        offsets = np.arange(0, (n + 1) * k, k, dtype=np.int32)
        flat, child = flat.ravel(), child.ravel()
    values = pa.concat_arrays([c for _, c in children]).take(pa.array(flat, type=pa.int64()))
    # the key of (row r, child c) is child c's name: a take from the k names, not nnz Python strings
    keys = pa.array([name for name, _ in children], pa.string()).take(pa.array(child))
    values = values if values.type == value_type else values.cast(value_type)
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values)


def _arrow_features(batch, inv) -> tuple[pa.MapArray, pa.MapArray]:
    n = batch.num_rows

    def empty() -> tuple[pa.MapArray, pa.MapArray]:
        return _children_to_map([], n, pa.string()), _children_to_map([], n, pa.float64())

    if "features" not in batch.schema.names:
        return empty()
    col = batch.column("features")
    if pa.types.is_struct(col.type):
        return _struct_to_maps(col, n, inv)
    if pa.types.is_null(col.type):
        return empty()
    if pa.types.is_map(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        # Rare layouts (a map column, or JSON text per row) go through the JSON checks row by row.
        items = col.to_pylist()
        objs = [{"features": _as_feature_dict(v)} for v in items]
        (co, ck, cv), (no, nk, nv) = _check_features(objs, inv, EventRules(max_features=1 << 30))
        return _map_array(co, ck, cv, pa.string()), _map_array(no, nk, nv, pa.float64())
    inv.mark(
        np.asarray(col.is_valid()),
        WRONG_TYPE,
        f"field 'features' must be an object, got {_arrow_kind(col.type)}",
    )
    return empty()


def _arrow_kind(t: pa.DataType) -> str:
    """Name an Arrow type the way the JSON path names Python types."""
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return "dict"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list"
    return str(t)


def _as_feature_dict(v):
    if v is None:
        return None
    if isinstance(v, list):
        return dict(v)
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def decode_arrow(batch: pa.RecordBatch, rules: EventRules) -> tuple[EventBatch, list[DeadLetter]]:
    """Decode and validate a columnar batch (Parquet/CSV rows) with vectorised checks.

    Columns are matched by name and cast at the boundary (:mod:`pipeline.events.columns`: integer
    and dictionary ids, boolean labels, every other column a feature); ``features`` may be a struct
    column (one child per feature, as Parquet written from JSON has), a map column, or JSON text.
    Dead letters carry the offending row as JSON in ``value``.
    """
    batch = normalize_columns(batch)
    n = batch.num_rows
    inv = _Invalid(n)
    event_id = _arrow_required_str(batch, "event_id", inv)
    ts = _arrow_ts(batch, inv, rules.ts_unit)
    user_id = _arrow_required_str(batch, "user_id", inv)
    item_id = _arrow_required_str(batch, "item_id", inv)
    label, _ = _arrow_number(batch, "label", inv, required=True)
    event_type = _arrow_optional_str(batch, "event_type", inv)
    if rules.event_types and event_type.null_count < n:
        allowed = pa.array(list(rules.event_types), type=pa.string())
        known = np.asarray(pc.is_in(event_type, value_set=allowed).fill_null(False))
        unknown = np.asarray(event_type.is_valid()) & ~known
        _mark_unknown_event_types(inv, unknown, lambda i: event_type[i].as_py(), rules)
    position, has_pos = _arrow_position(batch, inv)
    propensity, has_prop = _arrow_number(batch, "propensity", inv, required=False)
    _mark_propensity_range(inv, propensity, has_prop)
    request_id = _arrow_optional_str(batch, "request_id", inv)
    exposure_id = _arrow_optional_str(batch, "exposure_id", inv)
    candidates = arrow_candidates(batch, inv)
    mark_inconsistent_candidates(inv, item_id, candidates)
    cat, num = _arrow_features(batch, inv)
    out = (
        pa.RecordBatch.from_arrays(
            [
                event_id,
                pa.array(ts, type=pa.int64()),
                user_id,
                item_id,
                pa.array(label, type=pa.float64()),
                event_type,
                pa.array(position, type=pa.int64(), mask=~has_pos),
                pa.array(propensity, type=pa.float64(), mask=~has_prop),
                request_id,
                exposure_id,
                candidates,
                cat,
                num,
                pa.array(np.arange(n, dtype=np.int64)),
            ],
            schema=EVENT_SCHEMA,
        )
        if not inv.bad.all()
        else None
    )
    dead = []
    if inv.found:
        rows = batch.take(pa.array(sorted(inv.found), type=pa.int64())).to_pylist()
        for i, row in zip(sorted(inv.found), rows):
            dead.append(
                DeadLetter(
                    i, *inv.found[i], value=orjson.dumps(row, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
                )
            )
    if out is None:
        return EventBatch.empty(), dead
    if inv.bad.any():
        out = out.filter(pa.array(~inv.bad))
    return EventBatch(out), dead


def _arrow_position(batch, inv) -> tuple[np.ndarray, np.ndarray]:
    n = batch.num_rows
    if "position" not in batch.schema.names or pa.types.is_null(batch.column("position").type):
        return np.zeros(n, np.int64), np.zeros(n, bool)
    col = batch.column("position")
    if not pa.types.is_integer(col.type):
        if pa.types.is_floating(col.type):
            # CSV and pandas turn integer columns with gaps into floats; accept whole numbers.
            vals = col.fill_null(0.0).to_numpy(zero_copy_only=False)
            frac = np.isfinite(vals) & (vals != np.floor(vals))
            inv.mark(
                frac | ~np.isfinite(vals),
                WRONG_TYPE,
                lambda i: f"field 'position' must be an integer, got {vals[i]!r}",
            )
            col = pa.array(
                np.where(np.isfinite(vals), vals, 0).astype(np.int64), mask=np.asarray(col.is_null())
            )
        else:
            inv.mark(
                np.ones(n, bool),
                WRONG_TYPE,
                f"field 'position' must be an integer, got column type {col.type}",
            )
            return np.zeros(n, np.int64), np.zeros(n, bool)
    present = np.asarray(col.is_valid()) if col.null_count else np.ones(n, bool)
    vals = _numpy(col, pa.int64(), 0)
    inv.mark(present & (vals < 0), OUT_OF_RANGE, lambda i: f"field 'position' must be >= 0, got {vals[i]}")
    return vals, present
