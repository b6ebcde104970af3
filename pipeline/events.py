"""The event (DESIGN §3): decoding and validation of micro-batches.

A micro-batch arrives either as raw JSON values (Kafka record values, JSONL lines) or as an Arrow
record batch (Parquet, CSV). Both paths produce the same columnar :class:`EventBatch` plus one
:class:`DeadLetter` per invalid record, naming the reason, the field and the record's origin.
Validation never raises for bad input: a batch of garbage gives an empty ``EventBatch`` and a
list of dead letters, and the caller goes on.

Reasons (the ``reason`` label of ``streamlearn_dead_letter_total``) are the constants in
:data:`REASONS`.

Examples
--------
>>> records = [b'{"event_id": "e1", "ts": 1700000000000, "user_id": "u1", "item_id": "i1", "label": 1}',
...            b'{"event_id": "e2", "ts": 1700000000001, "user_id": "u1", "label": 0}',
...            b'{"event_id": ']
>>> batch, bad = decode_json(records, EventRules())
>>> len(batch), [(d.index, d.reason, d.detail) for d in bad]
(1, [(1, 'missing_field', "missing required field 'item_id'"), (2, 'malformed_json', 'invalid JSON: unexpected end of data: line 1 column 14 (char 13)')])
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

__all__ = [
    "DEFAULT_EVENT_TYPES",
    "EVENT_SCHEMA",
    "REASONS",
    "DeadLetter",
    "EventBatch",
    "EventRules",
    "decode_arrow",
    "decode_json",
]

MALFORMED_JSON = "malformed_json"
NOT_UTF8 = "not_utf8"
NOT_AN_OBJECT = "not_an_object"
EMPTY_RECORD = "empty_record"
OVERSIZED = "oversized"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
REASONS = (
    MALFORMED_JSON,
    NOT_UTF8,
    NOT_AN_OBJECT,
    EMPTY_RECORD,
    OVERSIZED,
    MISSING_FIELD,
    WRONG_TYPE,
    NON_FINITE,
    OUT_OF_RANGE,
    BAD_TIMESTAMP,
    UNKNOWN_EVENT_TYPE,
)

DEFAULT_EVENT_TYPES = ("impression", "view", "click", "add_to_cart", "order", "purchase", "feedback")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("label", pa.float64(), nullable=False),
        pa.field("event_type", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("propensity", pa.float64()),
        pa.field("request_id", pa.string()),
        pa.field("cat_features", pa.map_(pa.string(), pa.string())),
        pa.field("num_features", pa.map_(pa.string(), pa.float64())),
        pa.field("row", pa.int64(), nullable=False),
    ]
)
_REQUIRED_STR = ("event_id", "user_id", "item_id")
_OPTIONAL_STR = ("event_type", "request_id")


@dataclass(frozen=True)
class EventRules:
    """What makes an event valid.

    Parameters
    ----------
    max_record_bytes
        Records larger than this are dead-lettered as ``oversized`` without being parsed.
    event_types
        Allowed ``event_type`` values; an empty tuple allows any string.
    max_features
        Most entries allowed in one event's ``features`` object.
    """

    max_record_bytes: int = 65536
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    max_features: int = 256


@dataclass(frozen=True)
class DeadLetter:
    """An invalid record: why, where it came from, and its bytes (for the dead-letter sink)."""

    index: int
    reason: str
    detail: str
    value: bytes | None = None
    origin: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-serialisable form; the raw value as text when it is UTF-8, else as hex."""
        out: dict = {"reason": self.reason, "detail": self.detail, "origin": self.origin}
        if self.value is not None:
            try:
                out["value"] = self.value.decode("utf-8")
            except UnicodeDecodeError:
                out["value_hex"] = self.value.hex()
        return out


class EventBatch:
    """A validated micro-batch in columnar form (an Arrow record batch of :data:`EVENT_SCHEMA`).

    Columns are exposed as numpy arrays where they are numeric (zero-copy where Arrow allows).
    ``row`` is each event's index in the raw batch it was decoded from.
    """

    __slots__ = ("_cache", "table")

    def __init__(self, table: pa.RecordBatch):
        if table.schema != EVENT_SCHEMA:
            table = pa.RecordBatch.from_arrays(
                [table.column(f.name).cast(f.type) for f in EVENT_SCHEMA], schema=EVENT_SCHEMA
            )
        self.table = table
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def empty(cls) -> EventBatch:
        return cls(_empty_batch())

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> pa.Array:
        return self.table.column(name)

    def _numeric(self, name: str, fill: float | int) -> np.ndarray:
        if name not in self._cache:
            col = self.table.column(name)
            arr = col.fill_null(fill).to_numpy(zero_copy_only=False) if col.null_count else col.to_numpy()
            arr.flags.writeable = False
            self._cache[name] = arr
        return self._cache[name]

    @property
    def ts(self) -> np.ndarray:
        return self._numeric("ts", 0)

    @property
    def label(self) -> np.ndarray:
        return self._numeric("label", 0.0)

    @property
    def position(self) -> np.ndarray:
        """Position, -1 where absent."""
        return self._numeric("position", -1)

    @property
    def propensity(self) -> np.ndarray:
        """Logging propensity, NaN where absent."""
        return self._numeric("propensity", math.nan)

    @property
    def row(self) -> np.ndarray:
        return self._numeric("row", 0)

    def strings(self, name: str) -> list[str | None]:
        return self.table.column(name).to_pylist()

    def take(self, indices: np.ndarray) -> EventBatch:
        return EventBatch(self.table.take(pa.array(indices, type=pa.int64())))

    def __repr__(self) -> str:
        return f"EventBatch({len(self)} events)"


def _empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


# --------------------------------------------------------------------------- JSON path


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
    col = [o.get(name) if type(o) is dict else None for o in objs]
    kinds = [type(x) for x in col]
    missing = np.array([k is _NONE for k in kinds], dtype=bool)
    inv.mark(missing, MISSING_FIELD, f"missing required field {name!r}")
    wrong = np.array([k is not str and k is not _NONE for k in kinds], dtype=bool)
    inv.mark(wrong, WRONG_TYPE, lambda i: f"field {name!r} must be a string, got {_describe(col[i])}")
    return col


def _check_number(objs, name, inv, required: bool) -> tuple[np.ndarray, np.ndarray]:
    col = [o.get(name) if type(o) is dict else None for o in objs]
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
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp() * 1000.0 // 1) if dt.microsecond % 1000 == 0 else int(dt.timestamp() * 1000)


_TS_DETAIL = "field 'ts' must be an integer of milliseconds since the epoch or an RFC 3339 string with offset"


def _check_ts(objs, inv) -> np.ndarray:
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
    for i, (x, k) in enumerate(zip(col, kinds)):
        if k is str:
            ms = _parse_rfc3339(x)
            if ms is None:
                inv.mark(_one(len(col), i), BAD_TIMESTAMP, f"{_TS_DETAIL}; got {x[:64]!r}")
            else:
                out[i] = ms
        elif k is not int and x is not None:
            inv.mark(_one(len(col), i), BAD_TIMESTAMP, f"{_TS_DETAIL}; got {_describe(x)}")
    return out


def _one(n: int, i: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[i] = True
    return m


def _check_optional_str(objs, name, inv) -> list:
    col = [o.get(name) if type(o) is dict else None for o in objs]
    wrong = np.array([x is not None and type(x) is not str for x in col], dtype=bool)
    inv.mark(wrong, WRONG_TYPE, lambda i: f"field {name!r} must be a string, got {_describe(col[i])}")
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


def decode_json(values: Sequence[bytes], rules: EventRules) -> tuple[EventBatch, list[DeadLetter]]:
    """Decode and validate JSON records.

    Parameters
    ----------
    values
        One JSON object per element (bytes), e.g. Kafka record values or JSONL lines.
    rules
        Validation rules.

    Returns
    -------
    (EventBatch, list[DeadLetter])
        The valid events in input order (``row`` = index in ``values``) and the invalid records,
        with ``origin`` left empty for the caller to fill in.
    """
    fast = _decode_json_columnar(values, rules)
    if fast is not None:
        return fast
    n = len(values)
    inv = _Invalid(n)
    objs = _parse_all(values, inv, rules.max_record_bytes)
    not_obj = np.fromiter((type(o) is not dict for o in objs), dtype=bool, count=n)
    inv.mark(not_obj, NOT_AN_OBJECT, lambda i: f"record must be a JSON object, got {_describe(objs[i])}")
    cols: dict[str, object] = {}
    cols["event_id"] = _check_required_str(objs, "event_id", inv)
    cols["ts"] = _check_ts(objs, inv)
    cols["user_id"] = _check_required_str(objs, "user_id", inv)
    cols["item_id"] = _check_required_str(objs, "item_id", inv)
    label, _ = _check_number(objs, "label", inv, required=True)
    cols["label"] = label
    etype = _check_optional_str(objs, "event_type", inv)
    if rules.event_types:
        allowed = frozenset(rules.event_types)
        unknown = _field_mask(etype, lambda x: x is not None and type(x) is str and x not in allowed)
        inv.mark(
            unknown,
            UNKNOWN_EVENT_TYPE,
            lambda i: f"unknown event_type {etype[i][:64]!r}; allowed: {', '.join(rules.event_types)}",
        )
    cols["event_type"] = etype
    position, has_pos = _check_position(objs, inv)
    propensity, has_prop = _check_number(objs, "propensity", inv, required=False)
    inv.mark(
        has_prop & ~((propensity > 0) & (propensity <= 1)),
        OUT_OF_RANGE,
        lambda i: f"field 'propensity' must be in (0, 1], got {float(propensity[i])!r}",
    )
    cols["request_id"] = _check_optional_str(objs, "request_id", inv)
    cat, num = _check_features(objs, inv, rules)

    keep = np.flatnonzero(~inv.bad)
    bad = inv.bad
    arrays = [
        _strings(cols["event_id"], bad),
        pa.array(cols["ts"], type=pa.int64()),
        _strings(cols["user_id"], bad),
        _strings(cols["item_id"], bad),
        pa.array(label, type=pa.float64()),
        _strings(etype, bad),
        pa.array(position, type=pa.int64(), mask=~has_pos),
        pa.array(propensity, type=pa.float64(), mask=~has_prop),
        _strings(cols["request_id"], bad),
        _map_array(*cat, pa.string()),
        _map_array(*num, pa.float64()),
        pa.array(np.arange(n, dtype=np.int64)),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)
    if len(keep) < n:
        batch = batch.take(pa.array(keep, type=pa.int64()))
    dead = [DeadLetter(i, *inv.found[i], value=bytes(values[i])) for i in sorted(inv.found)]
    return EventBatch(batch), dead


_JSON_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", pa.int64()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("label", pa.float64()),
        ("event_type", pa.string()),
        ("position", pa.int64()),
        ("propensity", pa.float64()),
        ("request_id", pa.string()),
    ]
)


def _decode_json_columnar(values: Sequence[bytes], rules: EventRules):
    """Fast path: parse the whole batch with Arrow's C++ JSON reader, then validate columns.

    Arrow's reader is strict about types (a string where a number is declared, a bool label, a
    float timestamp, NaN, duplicate keys, non-UTF-8 all fail the whole block), so any batch it
    accepts holds exactly the values the row-by-row path would accept; every other batch returns
    ``None`` and takes the row-by-row path, which names each bad record.
    """
    n = len(values)
    if n == 0:
        return None
    for v in values:
        # blank records vanish in NDJSON and raw newlines split records: both need the slow path
        if len(v) > rules.max_record_bytes or not v or b"\n" in v or v.isspace():
            return None
    data = b"\n".join(values)
    try:
        data.decode("utf-8")  # Arrow's reader does not reject invalid UTF-8 inside strings
    except UnicodeDecodeError:
        return None
    try:
        table = pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(block_size=len(data) + 64, use_threads=False),
            parse_options=pajson.ParseOptions(
                explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="infer"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n:
        return None
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if batch is None:
        return None
    events, dead = decode_arrow(batch, rules)
    return events, [DeadLetter(d.index, d.reason, d.detail, bytes(values[d.index]), d.origin) for d in dead]


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


# --------------------------------------------------------------------------- Arrow path


def _dead_rows(mask: np.ndarray, reason: str, detail, inv: _Invalid) -> None:
    inv.mark(mask, reason, detail)


def _arrow_required_str(batch: pa.RecordBatch, name: str, inv: _Invalid) -> pa.Array:
    n = batch.num_rows
    if name not in batch.schema.names:
        inv.mark(np.ones(n, bool), MISSING_FIELD, f"missing required field {name!r}")
        return pa.nulls(n, pa.string())
    col = batch.column(name)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        inv.mark(np.ones(n, bool), WRONG_TYPE, f"field {name!r} must be a string, got column type {col.type}")
        return pa.nulls(n, pa.string())
    col = col.cast(pa.string())
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
    present = np.asarray(col.is_valid())
    if required:
        inv.mark(~present, MISSING_FIELD, f"missing required field {name!r}")
    vals = col.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    inv.mark(
        present & ~np.isfinite(vals),
        NON_FINITE,
        lambda i: f"field {name!r} must be finite, got {float(vals[i])!r}",
    )
    return vals, present


def _arrow_ts(batch, inv) -> np.ndarray:
    n = batch.num_rows
    if "ts" not in batch.schema.names:
        inv.mark(np.ones(n, bool), MISSING_FIELD, "missing required field 'ts'")
        return np.zeros(n, np.int64)
    col = batch.column("ts")
    if col.null_count:
        inv.mark(np.asarray(col.is_null()), MISSING_FIELD, "missing required field 'ts'")
    if pa.types.is_timestamp(col.type):
        out = (
            col.cast(pa.timestamp("ms", tz=col.type.tz))
            .cast(pa.int64())
            .fill_null(0)
            .to_numpy(zero_copy_only=False)
        )
    elif pa.types.is_integer(col.type):
        out = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        inv.mark(out < 0, BAD_TIMESTAMP, lambda i: f"{_TS_DETAIL}; got negative {out[i]}")
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        objs = [{"ts": v} for v in col.to_pylist()]
        return _check_ts(objs, inv)
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
    return col.cast(pa.string())


def _struct_to_maps(col: pa.StructArray, n: int, inv: _Invalid) -> tuple[pa.MapArray, pa.MapArray]:
    """Turn a struct column (one child per feature) into categorical and numeric maps, vectorised."""
    cat_children, num_children = [], []
    for i in range(col.type.num_fields):
        f = col.type.field(i)
        child = col.field(i)
        if col.null_count:
            child = pc.if_else(col.is_valid(), child, pa.nulls(n, child.type))
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            cat_children.append((f.name, child.cast(pa.string())))
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            child = child.cast(pa.float64())
            vals = child.fill_null(0.0).to_numpy(zero_copy_only=False)
            inv.mark(
                np.asarray(child.is_valid()) & ~np.isfinite(vals),
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
    valid = np.stack([np.asarray(c.is_valid()) for _, c in children], axis=1)  # n x k, row-major
    counts = valid.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    # element (row r, child c) sits at c*n + r in the child-major concatenation
    flat = (np.arange(k)[None, :] * n + np.arange(n)[:, None])[valid]
    values = pa.concat_arrays([c for _, c in children]).take(pa.array(flat, type=pa.int64()))
    names = np.array([name for name, _ in children], dtype=object)
    keys = pa.array(np.broadcast_to(names, (n, k))[valid], type=pa.string())
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values.cast(value_type))


def _arrow_features(batch, inv) -> tuple[pa.MapArray, pa.MapArray]:
    n = batch.num_rows
    empty = _children_to_map([], n, pa.string()), _children_to_map([], n, pa.float64())
    if "features" not in batch.schema.names:
        return empty
    col = batch.column("features")
    if pa.types.is_struct(col.type):
        return _struct_to_maps(col, n, inv)
    if pa.types.is_null(col.type):
        return empty
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
    return empty


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

    Columns are matched by name; extra columns are ignored. ``features`` may be a struct column
    (one child per feature, as Parquet written from JSON has), a map column, or JSON text.
    Dead letters carry the offending row as JSON in ``value``.
    """
    n = batch.num_rows
    inv = _Invalid(n)
    event_id = _arrow_required_str(batch, "event_id", inv)
    ts = _arrow_ts(batch, inv)
    user_id = _arrow_required_str(batch, "user_id", inv)
    item_id = _arrow_required_str(batch, "item_id", inv)
    label, _ = _arrow_number(batch, "label", inv, required=True)
    event_type = _arrow_optional_str(batch, "event_type", inv)
    if rules.event_types and event_type.null_count < n:
        allowed = pa.array(list(rules.event_types), type=pa.string())
        known = np.asarray(pc.is_in(event_type, value_set=allowed).fill_null(False))
        unknown = np.asarray(event_type.is_valid()) & ~known
        et = event_type
        inv.mark(
            unknown,
            UNKNOWN_EVENT_TYPE,
            lambda i: f"unknown event_type {et[i].as_py()[:64]!r}; allowed: {', '.join(rules.event_types)}",
        )
    position, has_pos = _arrow_position(batch, inv)
    propensity, has_prop = _arrow_number(batch, "propensity", inv, required=False)
    inv.mark(
        has_prop & ~((propensity > 0) & (propensity <= 1)),
        OUT_OF_RANGE,
        lambda i: f"field 'propensity' must be in (0, 1], got {float(propensity[i])!r}",
    )
    request_id = _arrow_optional_str(batch, "request_id", inv)
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
    present = np.asarray(col.is_valid())
    vals = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    inv.mark(present & (vals < 0), OUT_OF_RANGE, lambda i: f"field 'position' must be >= 0, got {vals[i]}")
    return vals, present


def attach_origins(dead: Iterable[DeadLetter], origin_of) -> list[DeadLetter]:
    """Fill in each dead letter's origin from a callable ``index -> dict``."""
    return [DeadLetter(d.index, d.reason, d.detail, d.value, origin_of(d.index)) for d in dead]
