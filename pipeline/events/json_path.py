"""JSON records (Kafka values, JSONL lines): a columnar fast path through Arrow's C++ JSON reader,
and a row-by-row path that names the first problem of every bad record."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from pipeline.events.arrow_path import decode_arrow
from pipeline.events.candidates import (
    CANDIDATES_TYPE,
    check_candidate_values,
    mark_inconsistent_candidates,
)
from pipeline.events.checks import (
    _check_features,
    _check_number,
    _check_optional_str,
    _check_position,
    _check_required_str,
    _check_ts,
    _describe,
    _field_mask,
    _Invalid,
    _map_array,
    _mark_propensity_range,
    _mark_unknown_event_types,
    _parse_all,
    _strings,
)
from pipeline.events.schema import (
    EVENT_SCHEMA,
    NOT_AN_OBJECT,
    DeadLetter,
    EventBatch,
    EventRules,
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
    cols["ts"] = _check_ts(objs, inv, rules.ts_unit)
    cols["user_id"] = _check_required_str(objs, "user_id", inv)
    cols["item_id"] = _check_required_str(objs, "item_id", inv)
    label, _ = _check_number(objs, "label", inv, required=True, booleans=True)
    cols["label"] = label
    etype = _check_optional_str(objs, "event_type", inv)
    if rules.event_types:
        allowed = frozenset(rules.event_types)
        unknown = _field_mask(etype, lambda x: x is not None and type(x) is str and x not in allowed)
        _mark_unknown_event_types(inv, unknown, etype.__getitem__, rules)
    cols["event_type"] = etype
    position, has_pos = _check_position(objs, inv)
    propensity, has_prop = _check_number(objs, "propensity", inv, required=False)
    _mark_propensity_range(inv, propensity, has_prop)
    cols["request_id"] = _check_optional_str(objs, "request_id", inv, integers=True)
    cols["exposure_id"] = _check_optional_str(objs, "exposure_id", inv, integers=True)
    candidates = check_candidate_values(objs, inv)
    cat, num = _check_features(objs, inv, rules)
    item_id = _strings(cols["item_id"], inv.bad)
    mark_inconsistent_candidates(inv, item_id, candidates)

    keep = np.flatnonzero(~inv.bad)
    bad = inv.bad
    arrays = [
        _strings(cols["event_id"], bad),
        pa.array(cols["ts"], type=pa.int64()),
        _strings(cols["user_id"], bad),
        item_id,
        pa.array(label, type=pa.float64()),
        _strings(etype, bad),
        pa.array(position, type=pa.int64(), mask=~has_pos),
        pa.array(propensity, type=pa.float64(), mask=~has_prop),
        _strings(cols["request_id"], bad),
        _strings(cols["exposure_id"], bad),
        candidates,
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
        ("exposure_id", pa.string()),
        ("candidates", CANDIDATES_TYPE),
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
