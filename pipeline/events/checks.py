"""Validation helpers shared by the JSON and Arrow paths: first-failure bookkeeping, field checks
for Python values (parsed JSON), timestamps and feature maps."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa

from pipeline.events.schema import (
    BAD_TIMESTAMP,
    EMPTY_RECORD,
    MALFORMED_JSON,
    MISSING_FIELD,
    NON_FINITE,
    NOT_UTF8,
    OUT_OF_RANGE,
    OVERSIZED,
    UNKNOWN_EVENT_TYPE,
    WRONG_TYPE,
    EventRules,
)
from pipeline.events.time_units import to_milliseconds


class _Invalid:
    """Collects the first failure of each record, in record order."""

    __slots__ = ("bad", "found")

    def __init__(self, n: int):
        self.bad = np.zeros(n, dtype=bool)
        self.found: dict[int, tuple[str, str]] = {}

    def mark(self, mask: np.ndarray, reason: str, detail) -> None:
        new = mask & ~self.bad
        if new.any():
            for i in np.flatnonzero(new).tolist():
                self.found[i] = (reason, detail(i) if callable(detail) else detail)
            self.bad |= new


_NUM = (int, float)
_NONE = type(None)


def _is_number(x) -> bool:
    return type(x) in _NUM


def _parse_one(value: bytes):
    """Parse one record; returns (object, None) or (None, (reason, detail))."""
    try:
        return orjson.loads(value), None
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return None, (NOT_UTF8, f"record is not valid UTF-8: {uexc.reason} at byte {uexc.start}")
        # orjson rejects NaN/Infinity literals; the stdlib parser accepts them so that we can name the
        # non-finite field precisely instead of calling the record malformed.
        try:
            return json.loads(value), None
        except (ValueError, RecursionError):
            return None, (MALFORMED_JSON, f"invalid JSON: {exc}")


def _parse_all(values: Sequence[bytes], inv: _Invalid, max_bytes: int) -> list:
    n = len(values)
    sizes = np.fromiter((len(v) for v in values), dtype=np.int64, count=n)
    inv.mark(
        sizes > max_bytes, OVERSIZED, lambda i: f"record of {sizes[i]} bytes exceeds the limit of {max_bytes}"
    )
    blank = np.fromiter((not v.strip() for v in values), dtype=bool, count=n)
    inv.mark(blank, EMPTY_RECORD, "empty record")
    objs: list = [None] * n
    if not inv.bad.any():
        # Fast path: the whole batch as one JSON array; falls back per record on any problem.
        try:
            parsed = orjson.loads(b"[" + b",".join(values) + b"]")
            if len(parsed) == n:
                return parsed
        except orjson.JSONDecodeError:
            pass
    for i in range(n):
        if inv.bad[i]:
            continue
        obj, err = _parse_one(values[i])
        if err is not None:
            inv.bad[i] = True
            inv.found[i] = err
        else:
            objs[i] = obj
    return objs


def _field_mask(col: list, test) -> np.ndarray:
    return np.fromiter((test(x) for x in col), dtype=bool, count=len(col))


def _describe(x) -> str:
    if x is None:
        return "null"
    return type(x).__name__ if not isinstance(x, bool) else "bool"


def _check_required_str(objs, name, inv) -> list:
    """An id field: a string, or an integer written in decimal (as the Arrow path casts them)."""
    col = _ids_as_text([o.get(name) if type(o) is dict else None for o in objs])
    kinds = [type(x) for x in col]
    missing = np.array([k is _NONE for k in kinds], dtype=bool)
    inv.mark(missing, MISSING_FIELD, f"missing required field {name!r}")
    wrong = np.array([k is not str and k is not _NONE for k in kinds], dtype=bool)
    inv.mark(
        wrong, WRONG_TYPE, lambda i: f"field {name!r} must be a string or an integer, got {_describe(col[i])}"
    )
    return col


def _ids_as_text(col: list) -> list:
    if any(type(x) is int for x in col):
        return [str(x) if type(x) is int else x for x in col]
    return col


def _check_number(objs, name, inv, required: bool, booleans: bool = False) -> tuple[np.ndarray, np.ndarray]:
    col = [o.get(name) if type(o) is dict else None for o in objs]
    if booleans and any(type(x) is bool for x in col):
        col = [float(x) if type(x) is bool else x for x in col]
    kinds = [type(x) for x in col]
    present = np.array([k is not _NONE for k in kinds], dtype=bool)
    if required:
        inv.mark(~present, MISSING_FIELD, f"missing required field {name!r}")
    is_num = np.array([k is int or k is float for k in kinds], dtype=bool)
    inv.mark(
        present & ~is_num, WRONG_TYPE, lambda i: f"field {name!r} must be a number, got {_describe(col[i])}"
    )
    try:
        vals = np.array([x if t else 0.0 for x, t in zip(col, is_num)], dtype=np.float64)
    except OverflowError:
        vals = np.array([float(x) if t else 0.0 for x, t in zip(col, is_num)], dtype=np.float64)
    inv.mark(
        is_num & ~np.isfinite(vals), NON_FINITE, lambda i: f"field {name!r} must be finite, got {col[i]!r}"
    )
    return vals, present & is_num


def _parse_rfc3339(s: str) -> int | None:
    """Milliseconds since the epoch of an RFC 3339 time; one without an offset is read as UTC."""
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000.0 // 1) if dt.microsecond % 1000 == 0 else int(dt.timestamp() * 1000)


_TS_DETAIL = "field 'ts' must be a number of events.ts_unit since the epoch or an RFC 3339 string"


def _check_ts(objs, inv, unit: str = "ms") -> np.ndarray:
    col = [o.get("ts") if type(o) is dict else None for o in objs]
    inv.mark(_field_mask(col, lambda x: x is None), MISSING_FIELD, "missing required field 'ts'")
    out = np.zeros(len(col), dtype=np.int64)
    kinds = [type(x) for x in col]
    is_int = np.fromiter((k is int for k in kinds), dtype=bool, count=len(col))
    if is_int.any():
        ints = [x if k is int else 0 for x, k in zip(col, kinds)]
        try:
            out[:] = np.array(ints, dtype=np.int64)
        except OverflowError:
            big = [not (-(2**63) <= v < 2**63) for v in ints]
            inv.mark(np.array(big), BAD_TIMESTAMP, lambda i: f"{_TS_DETAIL}; {col[i]} is out of range")
            out[:] = np.array([0 if b else v for v, b in zip(ints, big)], dtype=np.int64)
        inv.mark(is_int & (out < 0), BAD_TIMESTAMP, lambda i: f"{_TS_DETAIL}; got negative {col[i]}")
        if unit != "ms":
            scaled = to_milliseconds(out, unit)
            inv.mark(
                is_int & (scaled < 0) & (out >= 0),
                BAD_TIMESTAMP,
                lambda i: f"{_TS_DETAIL}; {col[i]} is out of range",
            )
            out = np.where(is_int, scaled, out)
    for i, (x, k) in enumerate(zip(col, kinds)):
        if k is str:
            ms = _parse_rfc3339(x)
            if ms is None:
                inv.mark(_one(len(col), i), BAD_TIMESTAMP, f"{_TS_DETAIL}; got {x[:64]!r}")
            else:
                out[i] = ms
        elif k is float:
            ms = int(to_milliseconds(np.array([x]), unit)[0])
            if ms < 0:
                inv.mark(_one(len(col), i), BAD_TIMESTAMP, f"{_TS_DETAIL}; got {x!r}")
            else:
                out[i] = ms
        elif k is not int and x is not None:
            inv.mark(_one(len(col), i), BAD_TIMESTAMP, f"{_TS_DETAIL}; got {_describe(x)}")
    return out


def _one(n: int, i: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[i] = True
    return m


def _check_optional_str(objs, name, inv, integers: bool = False) -> list:
    col = [o.get(name) if type(o) is dict else None for o in objs]
    if integers:
        col = _ids_as_text(col)
    wrong = np.array([x is not None and type(x) is not str for x in col], dtype=bool)
    what = "a string or an integer" if integers else "a string"
    inv.mark(wrong, WRONG_TYPE, lambda i: f"field {name!r} must be {what}, got {_describe(col[i])}")
    return col


def _check_features(objs, inv, rules: EventRules):
    """Split ``features`` into categorical and numeric maps; returns their flat Arrow parts."""
    col = [o.get("features") if type(o) is dict else None for o in objs]
    n = len(col)
    cat_off = np.zeros(n + 1, dtype=np.int32)
    num_off = np.zeros(n + 1, dtype=np.int32)
    cat_k: list[str] = []
    cat_v: list[str] = []
    num_k: list[str] = []
    num_v: list[float] = []
    for i, f in enumerate(col):
        if f is not None and not inv.bad[i]:
            if type(f) is not dict:
                inv.mark(_one(n, i), WRONG_TYPE, f"field 'features' must be an object, got {_describe(f)}")
            elif len(f) > rules.max_features:
                inv.mark(
                    _one(n, i),
                    OUT_OF_RANGE,
                    f"'features' has {len(f)} entries, more than {rules.max_features}",
                )
            else:
                err = _split_features(f, cat_k, cat_v, num_k, num_v)
                if err is not None:
                    inv.mark(_one(n, i), *err)
                    # roll back the partial row
                    del cat_k[cat_off[i] :], cat_v[cat_off[i] :], num_k[num_off[i] :], num_v[num_off[i] :]
        cat_off[i + 1] = len(cat_k)
        num_off[i + 1] = len(num_k)
    return (cat_off, cat_k, cat_v), (num_off, num_k, num_v)


def _split_features(f: dict, cat_k, cat_v, num_k, num_v) -> tuple[str, str] | None:
    for k, v in f.items():
        t = type(v)
        if t is str:
            cat_k.append(k)
            cat_v.append(v)
        elif v is None:
            continue  # a null feature is an absent feature (as in Parquet/CSV)
        elif t is bool:
            cat_k.append(k)
            cat_v.append("true" if v else "false")
        elif t is int or t is float:
            fv = float(v)
            if not math.isfinite(fv):
                return NON_FINITE, f"feature {k!r} must be finite, got {v!r}"
            num_k.append(k)
            num_v.append(fv)
        else:
            return WRONG_TYPE, f"feature {k!r} must be a string or a number, got {_describe(v)}"
    return None


def _map_array(offsets: np.ndarray, keys: list, values: list, value_type: pa.DataType) -> pa.MapArray:
    return pa.MapArray.from_arrays(
        pa.array(offsets, type=pa.int32()),
        pa.array(keys, type=pa.string()),
        pa.array(values, type=value_type),
    )


def _mark_unknown_event_types(inv: _Invalid, unknown: np.ndarray, value_of, rules: EventRules) -> None:
    """Mark the rows of ``unknown`` as UNKNOWN_EVENT_TYPE; ``value_of(i)`` is row i's event type."""
    allowed = ", ".join(rules.event_types)
    inv.mark(
        unknown, UNKNOWN_EVENT_TYPE, lambda i: f"unknown event_type {value_of(i)[:64]!r}; allowed: {allowed}"
    )


def _mark_propensity_range(inv: _Invalid, propensity: np.ndarray, present: np.ndarray) -> None:
    """A logged propensity must be a probability an importance weight can divide by: (0, 1]."""
    inv.mark(
        present & ~((propensity > 0) & (propensity <= 1)),
        OUT_OF_RANGE,
        lambda i: f"field 'propensity' must be in (0, 1], got {float(propensity[i])!r}",
    )


def _check_position(objs, inv) -> tuple[np.ndarray, np.ndarray]:
    col = [o.get("position") if type(o) is dict else None for o in objs]
    present = _field_mask(col, lambda x: x is not None)
    is_int = _field_mask(col, lambda x: type(x) is int)
    inv.mark(
        present & ~is_int,
        WRONG_TYPE,
        lambda i: f"field 'position' must be an integer, got {_describe(col[i])}",
    )
    vals = np.array([x if type(x) is int and -(2**62) < x < 2**62 else 0 for x in col], dtype=np.int64)
    inv.mark(is_int & (vals < 0), OUT_OF_RANGE, lambda i: f"field 'position' must be >= 0, got {col[i]}")
    return vals, present & is_int


def _strings(col: list, bad: np.ndarray) -> pa.Array:
    """Arrow strings of a column; invalid rows (which may hold anything) become null."""
    if bad.any():
        col = [x if (not b and type(x) is str) else None for x, b in zip(col, bad.tolist())]
    return pa.array(col, type=pa.string())
