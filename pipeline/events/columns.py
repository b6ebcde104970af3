"""Column types at the file boundary: what Parquet and CSV from a warehouse may hold, and how it
becomes the event schema (the README's "Events" section states the same rules).

=================  =======================================================================
field              accepted column types
=================  =======================================================================
ids                ``event_id``, ``user_id``, ``item_id``, ``request_id``, ``exposure_id``: string, large
                   string, dictionary of strings, or integers (written in decimal, ``42`` ->
                   ``"42"``); ``event_type``: strings only
``label``          float, integer or boolean (true = 1)
``ts``             integer or float in ``events.ts_unit`` (ms by default; s and us too),
                   a timestamp of any unit (with a zone: that instant; without: read as
                   UTC), a date (midnight UTC), or RFC 3339 strings (no offset: UTC)
``position``       integer (floats that are whole numbers too)
``propensity``     float or integer
``candidates``     a list of strings, integers or dictionary strings
                   (:mod:`pipeline.events.candidates`)
features           a struct column ``features`` and every other column that is not an event
                   field (*flat feature columns*): strings, dictionaries and booleans
                   (``"true"``/``"false"``) are categorical, numbers numeric; columns of
                   other types (lists, structs, binary, timestamps) are left out, and the
                   file source names them in a warning; the simulator's ground-truth
                   columns (:data:`GROUND_TRUTH_COLUMNS`) are never features
=================  =======================================================================

A required field without a column, or an event field whose column type cannot be used at all, is
a property of the whole file, not of its rows: :func:`check_schema` raises a
:class:`~pipeline.errors.ConfigError` naming the file, the column and its type (exit 2) instead of
dead-lettering every row.

Examples
--------
>>> import pyarrow as pa
>>> b = pa.record_batch({"user_id": pa.array([7, 8]), "label": pa.array([True, False]),
...                      "device": pa.array(["ios", "web"]).dictionary_encode()})
>>> out = normalize_columns(b)
>>> out.column("user_id").to_pylist(), out.column("label").to_pylist()
(['7', '8'], [1.0, 0.0])
>>> out.column("features").to_pylist()
[{'device': 'ios'}, {'device': 'web'}]
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.errors import ConfigError

__all__ = ["EVENT_FIELDS", "GROUND_TRUTH_COLUMNS", "REQUIRED_FIELDS", "check_schema", "normalize_columns"]

EVENT_FIELDS = (
    "event_id",
    "ts",
    "user_id",
    "item_id",
    "label",
    "event_type",
    "position",
    "propensity",
    "request_id",
    "exposure_id",
    "candidates",
    "features",
)
REQUIRED_FIELDS = ("event_id", "ts", "user_id", "item_id", "label")
_ID_FIELDS = frozenset({"event_id", "user_id", "item_id", "event_type", "request_id", "exposure_id"})
_TEXT_ONLY = frozenset({"event_type"})  # a name from a fixed set, not a number
_EVENT_SET = frozenset(EVENT_FIELDS)
#: What ``streamlearn simulate --truth`` adds (``TRUTH_FIELDS`` and ``DELAY_TRUTH_FIELDS`` in
#: pipeline/simulation/records.py): the answers a benchmark scores against. As flat feature
#: columns they would hand a learner its own label (``clicked``) or the true probability.
GROUND_TRUTH_COLUMNS = frozenset({"p_click", "p_best", "clicked", "delay_ms"})


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _usable_id(t: pa.DataType, integers: bool = True) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type) or (integers and pa.types.is_integer(t.value_type))
    return _is_text(t) or (integers and pa.types.is_integer(t)) or pa.types.is_null(t)


_USABLE = {
    "label": lambda t: _is_number(t) or pa.types.is_boolean(t) or pa.types.is_null(t),
    "ts": lambda t: (
        _is_number(t) or pa.types.is_timestamp(t) or pa.types.is_date(t) or _is_text(t) or pa.types.is_null(t)
    ),
    "position": lambda t: _is_number(t) or pa.types.is_null(t),
    "propensity": lambda t: _is_number(t) or pa.types.is_null(t),
    "candidates": lambda t: (
        ((pa.types.is_list(t) or pa.types.is_large_list(t)) and _usable_id(t.value_type))
        or pa.types.is_null(t)
    ),
    "features": lambda t: pa.types.is_struct(t) or pa.types.is_map(t) or _is_text(t) or pa.types.is_null(t),
}
_EXPECTED = {
    "label": "a number or a boolean",
    "ts": "an integer or float in events.ts_unit, a timestamp, a date or RFC 3339 strings",
    "position": "an integer",
    "propensity": "a number",
    "candidates": "a list of strings or integers",
    "features": "a struct (one field per feature)",
}


def _feature_type(t: pa.DataType) -> pa.DataType | None:
    """The type a flat feature column is read as (string or float64), None if it cannot be one."""
    if _is_text(t) or pa.types.is_boolean(t):
        return pa.string()
    if pa.types.is_dictionary(t) and (_is_text(t.value_type) or pa.types.is_integer(t.value_type)):
        return pa.string()
    if _is_number(t):
        return pa.float64()
    return None


def check_schema(schema: pa.Schema, source: str) -> list[str]:
    """Check a file's columns against the rules above; returns the flat columns that are left out.

    Raises
    ------
    ConfigError
        A required field has no column, or an event field's column type cannot be used; the
        message names ``source``, the column and its type.
    """
    names = schema.names
    missing = [f for f in REQUIRED_FIELDS if f not in names]
    if missing:
        raise ConfigError(
            f"{source}: no column {missing[0]!r} (required: {', '.join(REQUIRED_FIELDS)}; found: "
            f"{', '.join(names) or 'none'})"
        )
    ignored = []
    for field in schema:
        name, t = field.name, field.type
        if name in GROUND_TRUTH_COLUMNS:
            continue  # left out by design, not for want of a rule: nothing to warn about
        if name in _ID_FIELDS:
            if not _usable_id(t, name not in _TEXT_ONLY):
                what = "strings" if name in _TEXT_ONLY else "strings or integers"
                raise ConfigError(f"{source}: column {name!r} has type {t}; expected {what}")
        elif name in _USABLE:
            if not _USABLE[name](t):
                raise ConfigError(f"{source}: column {name!r} has type {t}; expected {_EXPECTED[name]}")
        elif _feature_type(t) is None:
            ignored.append(f"{name} ({t})")
    return ignored


def normalize_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with ids as strings, a boolean label as 0/1 and flat feature columns in ``features``.

    A batch already in those types comes back as it is. Columns of types no rule accepts are left
    for the decoder to reject row by row (files are checked as a whole by :func:`check_schema`).
    """
    schema = batch.schema
    if all(name in _EVENT_SET for name in schema.names) and not any(
        _needs_cast(f.name, f.type) for f in schema
    ):
        return batch
    names, arrays, flat = [], [], []
    for name, col in zip(schema.names, batch.columns):
        if name in GROUND_TRUTH_COLUMNS:
            continue
        if name not in _EVENT_SET:
            target = _feature_type(col.type)
            if target is not None:
                flat.append((name, _cast(col, target)))
            continue
        if _needs_cast(name, col.type):
            col = _cast(col, pa.string() if name in _ID_FIELDS else pa.float64())
        names.append(name)
        arrays.append(col)
    if flat:
        if "features" in names and pa.types.is_struct(batch.column("features").type):
            i = names.index("features")
            struct = arrays[i]
            children = [(struct.type.field(k).name, struct.field(k)) for k in range(struct.type.num_fields)]
            own = {n for n, _ in children}
            children += [(n, c) for n, c in flat if n not in own]  # the struct's own value wins
            arrays[i] = _struct(children, struct)
        elif "features" not in names:
            names.append("features")
            arrays.append(_struct(flat, None))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _needs_cast(name: str, t: pa.DataType) -> bool:
    if name in _ID_FIELDS:
        return not (pa.types.is_string(t) or pa.types.is_null(t)) and _usable_id(t, name not in _TEXT_ONLY)
    if name == "label":
        return pa.types.is_boolean(t)
    return False


def _cast(col: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_boolean(col.type) and target == pa.string():
        import pyarrow.compute as pc

        return pc.if_else(col, "true", "false")
    return col if col.type == target else col.cast(target)


def _struct(children: list[tuple[str, pa.Array]], parent: pa.StructArray | None) -> pa.StructArray:
    names = [n for n, _ in children]
    arrays = [c for _, c in children]
    if parent is not None and parent.null_count:
        mask = parent.is_null()
        return pa.StructArray.from_arrays(arrays, names=names, mask=mask)
    return pa.StructArray.from_arrays(arrays, names=names)
