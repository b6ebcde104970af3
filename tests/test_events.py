"""Decoding and validation: every bad input gets its reason, and nothing valid is lost."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa
import pytest

from pipeline.events import EventRules, decode_arrow, decode_json

RULES = EventRules(max_record_bytes=2048)
GOOD = {
    "event_id": "e1",
    "ts": 1_700_000_000_000,
    "user_id": "u1",
    "item_id": "i1",
    "label": 1,
    "event_type": "click",
    "position": 2,
    "propensity": 0.25,
    "request_id": "r1",
    "features": {"device": "ios", "price": 9.5},
}


def _with(**changes) -> bytes:
    rec = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            rec.pop(k)
        else:
            rec[k] = v
    return orjson.dumps(rec)


_DROP = object()

BAD_RECORDS = [
    ("malformed_json", b'{"event_id": "e1", "ts": 17', "invalid JSON"),
    ("truncated_last_line", b'{"event_id": "e1", "ts": 1700000000000, "user_id": "u1", "ite', "invalid JSON"),
    ("empty_line", b"", "empty record"),
    ("blank_line", b"   ", "empty record"),
    ("not_utf8", b'{"event_id": "\xff\xfe"}', "not valid UTF-8"),
    ("json_array", b"[1, 2]", "must be a JSON object, got list"),
    ("json_string", b'"hello"', "must be a JSON object, got str"),
    ("missing_event_id", _with(event_id=_DROP), "missing required field 'event_id'"),
    ("missing_user_id", _with(user_id=_DROP), "missing required field 'user_id'"),
    ("missing_item_id", _with(item_id=_DROP), "missing required field 'item_id'"),
    ("missing_label", _with(label=_DROP), "missing required field 'label'"),
    ("missing_ts", _with(ts=_DROP), "missing required field 'ts'"),
    ("null_user_id", _with(user_id=None), "missing required field 'user_id'"),
    ("string_label", _with(label="1"), "field 'label' must be a number, got str"),
    ("nan_label", _with(label=_DROP)[:-1] + b',"label":NaN}', "field 'label' must be finite, got nan"),
    ("inf_label", _with(label=_DROP)[:-1] + b',"label":Infinity}', "field 'label' must be finite, got inf"),
    ("propensity_zero", _with(propensity=0), "field 'propensity' must be in (0, 1], got 0.0"),
    ("propensity_above_one", _with(propensity=1.5), "field 'propensity' must be in (0, 1], got 1.5"),
    ("propensity_negative", _with(propensity=-0.1), "must be in (0, 1]"),
    ("propensity_string", _with(propensity="0.5"), "field 'propensity' must be a number, got str"),
    (
        "propensity_nan",
        _with(propensity=_DROP)[:-1] + b',"propensity":NaN}',
        "field 'propensity' must be finite",
    ),
    ("position_negative", _with(position=-1), "field 'position' must be >= 0, got -1"),
    ("position_float", _with(position=1.5), "field 'position' must be an integer, got float"),
    ("ts_garbage", _with(ts="yesterday"), "got 'yesterday'"),
    ("float_user_id", _with(user_id=4.5), "field 'user_id' must be a string or an integer, got float"),
    ("bool_user_id", _with(user_id=True), "field 'user_id' must be a string or an integer, got bool"),
    ("ts_negative", _with(ts=-5), "got negative -5"),
    ("ts_bool", _with(ts=True), "got bool"),
    ("unknown_event_type", _with(event_type="teleport"), "unknown event_type 'teleport'"),
    ("event_type_number", _with(event_type=3), "field 'event_type' must be a string, got int"),
    ("exposure_id_list", _with(exposure_id=["d:0"]), "field 'exposure_id' must be a string"),
    ("features_list", _with(features=[1, 2]), "field 'features' must be an object, got list"),
    (
        "feature_nested",
        _with(features={"geo": {"lat": 1}}),
        "feature 'geo' must be a string or a number, got dict",
    ),
    (
        "feature_nan",
        _with(features=_DROP)[:-1] + b',"features":{"price":NaN}}',
        "feature 'price' must be finite",
    ),
    ("oversized", _with(request_id="x" * 5000), "exceeds the limit of 2048"),
]
REASON_OF = {
    "malformed_json": "malformed_json",
    "truncated_last_line": "malformed_json",
    "empty_line": "empty_record",
    "blank_line": "empty_record",
    "not_utf8": "not_utf8",
    "json_array": "not_an_object",
    "json_string": "not_an_object",
    "string_label": "wrong_type",
    "float_user_id": "wrong_type",
    "exposure_id_list": "wrong_type",
    "bool_user_id": "wrong_type",
    "nan_label": "non_finite",
    "inf_label": "non_finite",
    "propensity_nan": "non_finite",
    "propensity_string": "wrong_type",
    "position_float": "wrong_type",
    "event_type_number": "wrong_type",
    "features_list": "wrong_type",
    "feature_nested": "wrong_type",
    "feature_nan": "non_finite",
    "unknown_event_type": "unknown_event_type",
    "oversized": "oversized",
}


def _expected_reason(case: str) -> str:
    if case in REASON_OF:
        return REASON_OF[case]
    if case.startswith(("missing_", "null_")):
        return "missing_field"
    if case.startswith("ts_"):
        return "bad_timestamp"
    return "out_of_range"


@pytest.mark.parametrize(("case", "record", "detail"), BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_decode_json_bad_record_is_dead_lettered_with_reason(case, record, detail):
    good = [_with(event_id="before"), _with(event_id="after")]
    batch, dead = decode_json([good[0], record, good[1]], RULES)
    assert [d.index for d in dead] == [1]
    assert dead[0].reason == _expected_reason(case)
    assert detail in dead[0].detail
    assert dead[0].value == record
    # nothing valid is lost, and order is kept
    assert batch.strings("event_id") == ["before", "after"]
    assert batch.row.tolist() == [0, 2]
    # alone in its batch (the columnar fast path must not accept it either)
    alone, dead_alone = decode_json([record], RULES)
    assert len(alone) == 0 and [(d.reason, d.detail) for d in dead_alone] == [
        (dead[0].reason, dead[0].detail)
    ]


def test_decode_json_valid_record_keeps_every_field():
    batch, dead = decode_json([_with()], RULES)
    assert dead == []
    row = batch.table.to_pylist()[0]
    assert row["event_id"] == "e1" and row["ts"] == 1_700_000_000_000 and row["label"] == 1.0
    assert row["position"] == 2 and row["propensity"] == 0.25 and row["request_id"] == "r1"
    assert row["cat_features"] == [("device", "ios")] and row["num_features"] == [("price", 9.5)]


def test_decode_json_rfc3339_timestamps_convert_to_epoch_ms():
    recs = [_with(ts="2024-01-01T00:00:00Z"), _with(ts="2024-01-01T01:00:00.250+01:00")]
    batch, dead = decode_json(recs, RULES)
    assert dead == []
    assert batch.ts.tolist() == [1_704_067_200_000, 1_704_067_200_250]


def test_decode_json_optional_fields_absent_are_null():
    rec = {k: GOOD[k] for k in ("event_id", "ts", "user_id", "item_id", "label")}
    batch, dead = decode_json([orjson.dumps(rec)], RULES)
    assert dead == []
    assert batch.position.tolist() == [-1]
    assert math.isnan(batch.propensity[0])


def test_decode_json_null_feature_is_absent_in_both_paths():
    batch, dead = decode_json([_with(features={"vip": None, "device": "ios"})], RULES)
    assert dead == [] and batch.table.to_pylist()[0]["cat_features"] == [("device", "ios")]
    slow, dead = decode_json([_with(features={"vip": None, "device": "ios"}), b"x"], RULES)
    assert len(dead) == 1 and slow.table.to_pylist()[0]["cat_features"] == [("device", "ios")]


def test_decode_json_fast_and_row_paths_agree_on_valid_batches():
    records = [
        _with(event_id=f"e{i}", features={"device": "ios", "price": float(i), "n": i}) for i in range(20)
    ]
    fast, _ = decode_json(records, RULES)
    slow, dead = decode_json([*records, b"x"], RULES)
    assert len(dead) == 1
    assert fast.table.equals(slow.table)


def test_decode_json_all_invalid_batch_gives_empty_batch():
    batch, dead = decode_json([b"x", b"", b"[]"], RULES)
    assert len(batch) == 0 and len(dead) == 3


def test_decode_json_event_types_unrestricted_when_empty():
    batch, dead = decode_json([_with(event_type="teleport")], EventRules(event_types=()))
    assert dead == [] and batch.strings("event_type") == ["teleport"]


def test_decode_json_mixed_batch_large_keeps_all_valid():
    rng = np.random.default_rng(0)
    records, valid = [], []
    for i in range(3000):
        if rng.random() < 0.1:
            records.append(BAD_RECORDS[int(rng.integers(len(BAD_RECORDS)))][1])
        else:
            records.append(_with(event_id=f"e{i}"))
            valid.append(f"e{i}")
    batch, dead = decode_json(records, RULES)
    assert batch.strings("event_id") == valid
    assert len(dead) + len(batch) == len(records)


# ------------------------------------------------------------------------------ Arrow path


def _arrow(**cols) -> pa.RecordBatch:
    base = {
        "event_id": pa.array(["a", "b", "c"]),
        "ts": pa.array([1, 2, 3], pa.int64()),
        "user_id": pa.array(["u1", "u2", "u3"]),
        "item_id": pa.array(["i1", "i2", "i3"]),
        "label": pa.array([1.0, 0.0, 1.0]),
    }
    base.update(cols)
    base = {k: v for k, v in base.items() if v is not None}
    return pa.RecordBatch.from_pydict(base)


ARROW_CASES = [
    ("null_user", {"user_id": pa.array(["u1", None, "u3"])}, [1], "missing_field"),
    ("nan_label", {"label": pa.array([1.0, math.nan, 0.0])}, [1], "non_finite"),
    ("inf_feature", {"features": pa.array([{"p": 1.0}, {"p": math.inf}, {"p": 2.0}])}, [1], "non_finite"),
    ("bad_propensity", {"propensity": pa.array([0.5, 0.0, None])}, [1], "out_of_range"),
    ("negative_position", {"position": pa.array([0, -3, 1])}, [1], "out_of_range"),
    ("unknown_type", {"event_type": pa.array(["click", "zap", None])}, [1], "unknown_event_type"),
    ("no_label_column", {"label": None}, [0, 1, 2], "missing_field"),
    (
        "bad_ts_string",
        {"ts": pa.array(["2024-01-01T00:00:00Z", "nope", "2024-01-01T00:00:01Z"])},
        [1],
        "bad_timestamp",
    ),
]


@pytest.mark.parametrize(("case", "cols", "bad_rows", "reason"), ARROW_CASES, ids=[c[0] for c in ARROW_CASES])
def test_decode_arrow_bad_rows_are_dead_lettered(case, cols, bad_rows, reason):
    batch, dead = decode_arrow(_arrow(**cols), RULES)
    assert [d.index for d in dead] == bad_rows
    assert {d.reason for d in dead} == {reason}
    assert batch.row.tolist() == [i for i in range(3) if i not in bad_rows]
    assert all(orjson.loads(d.value) is not None for d in dead)


def test_decode_arrow_struct_features_split_into_categorical_and_numeric():
    feats = pa.array(
        [{"device": "ios", "price": 1.5}, {"device": None, "price": 2.0}, {"device": "web", "price": None}]
    )
    batch, dead = decode_arrow(_arrow(features=feats), RULES)
    assert dead == []
    rows = batch.table.to_pylist()
    assert [r["cat_features"] for r in rows] == [[("device", "ios")], [], [("device", "web")]]
    assert [r["num_features"] for r in rows] == [[("price", 1.5)], [("price", 2.0)], []]


def test_decode_arrow_matches_decode_json_on_same_events():
    records = [
        _with(event_id=f"e{i}", position=i, features={"device": "ios", "price": float(i)}) for i in range(5)
    ]
    from_json, _ = decode_json(records, RULES)
    table = pa.Table.from_pylist([orjson.loads(r) for r in records]).to_batches()[0]
    from_arrow, _ = decode_arrow(table, RULES)
    assert from_json.table.equals(from_arrow.table)


# --------------------------------------------------------------------------- types at the boundary

ACCEPTED_JSON = [
    # (changes to the good record, column, expected value after decoding)
    ({"user_id": 42}, "user_id", "42"),
    ({"request_id": 7}, "request_id", "7"),
    ({"exposure_id": "d-1:0"}, "exposure_id", "d-1:0"),
    ({"exposure_id": 12}, "exposure_id", "12"),
    ({"label": True}, "label", 1.0),
    ({"ts": 1.7e12 + 0.4}, "ts", 1_700_000_000_000),
    ({"ts": "2024-01-01T10:00:00"}, "ts", 1_704_103_200_000),  # no offset: UTC
    ({"ts": "2024-01-01"}, "ts", 1_704_067_200_000),  # a date: midnight UTC
    ({"features": {"vip": True}}, "cat_features", [("vip", "true")]),
]


@pytest.mark.parametrize(("changes", "column", "expected"), ACCEPTED_JSON)
def test_decode_json_accepts_the_documented_casts_alone_and_among_others(changes, column, expected):
    record = _with(**changes)
    for values in ([record], [record, _with(event_id="plain")]):  # columnar and row paths
        batch, dead = decode_json(values, RULES)
        assert dead == []
        assert batch.column(column).to_pylist()[0] == expected


def test_ts_unit_converts_seconds_and_microseconds_to_milliseconds():
    for unit, ts, expected in (
        ("s", 1_700_000_000, 1_700_000_000_000),
        ("us", 1_700_000_000_123_456, 1_700_000_000_123),
    ):
        rules = EventRules(ts_unit=unit)
        json_batch, dead = decode_json([_with(ts=ts), _with(ts=float(ts), event_id="f")], rules)
        assert dead == [] and json_batch.ts.tolist() == [expected, expected]
        arrow_batch, dead = decode_arrow(_arrow(ts=pa.array([ts] * 3, pa.int64())), rules)
        assert dead == [] and arrow_batch.ts.tolist() == [expected] * 3
    batch, dead = decode_json([_with(ts=1_700_000_000.25)], EventRules(ts_unit="s"))
    assert dead == [] and batch.ts.tolist() == [1_700_000_000_250]  # float seconds keep their ms


def test_decode_arrow_casts_warehouse_column_types():
    import datetime as dt

    t0 = dt.datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    cols = {
        "event_id": pa.array(["a", "b", "c"], pa.large_string()),
        "user_id": pa.array([10, 11, 12], pa.int64()),
        "item_id": pa.array(["x", "y", "x"]).dictionary_encode(),
        "label": pa.array([True, False, True]),
        "ts": pa.array([t0] * 3, pa.timestamp("us", tz="Europe/Berlin")),
        "device": pa.array(["ios", None, "web"]).dictionary_encode(),
        "vip": pa.array([True, False, None]),
        "price": pa.array([1, 2, 3], pa.int32()),
        "tags": pa.array([[1], [2], [3]]),  # no rule for lists: left out
    }
    batch, dead = decode_arrow(pa.RecordBatch.from_pydict(cols), RULES)
    assert dead == []
    assert batch.column("user_id").to_pylist() == ["10", "11", "12"]
    assert batch.column("item_id").to_pylist() == ["x", "y", "x"]
    assert batch.label.tolist() == [1.0, 0.0, 1.0]
    assert batch.ts.tolist() == [int(t0.timestamp() * 1000)] * 3  # the instant, floored to ms
    assert batch.column("cat_features").to_pylist()[0] == [("device", "ios"), ("vip", "true")]
    assert batch.column("num_features").to_pylist()[1] == [("price", 2.0)]
    naive = decode_arrow(_arrow(ts=pa.array([dt.datetime(2024, 1, 1)] * 3, pa.timestamp("ms"))), RULES)[0]
    assert naive.ts.tolist() == [1_704_067_200_000] * 3  # no zone: read as UTC


def test_flat_feature_columns_join_a_features_struct_and_the_struct_wins_a_clash():
    feats = pa.array([{"device": "ios"}, {"device": "web"}, {"device": None}])
    batch, dead = decode_arrow(
        _arrow(features=feats, device=pa.array(["x", "y", "z"]), hour=pa.array([1, 2, 3])), RULES
    )
    assert dead == []
    assert batch.column("cat_features").to_pylist() == [[("device", "ios")], [("device", "web")], []]
    assert [dict(r)["hour"] for r in batch.column("num_features").to_pylist()] == [1.0, 2.0, 3.0]


def test_check_schema_names_the_file_the_column_and_its_type():
    from pipeline.errors import ConfigError
    from pipeline.events.columns import check_schema

    good = _arrow().schema
    assert check_schema(good.append(pa.field("tags", pa.list_(pa.int64()))), "f.parquet") == [
        "tags (list<item: int64>)"
    ]
    for field, message in (
        (
            pa.field("user_id", pa.float64()),
            "f.parquet: column 'user_id' has type double; expected strings or integers",
        ),
        (
            pa.field("label", pa.string()),
            "f.parquet: column 'label' has type string; expected a number or a boolean",
        ),
        (pa.field("event_type", pa.int64()), "column 'event_type' has type int64; expected strings"),
        (pa.field("ts", pa.binary()), "column 'ts' has type binary"),
    ):
        schema = pa.schema(
            [f if f.name != field.name else field for f in good]
            + ([field] if field.name not in good.names else [])
        )
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_schema(schema, "f.parquet")
    with pytest.raises(ConfigError, match=r"f\.parquet: no column 'label'"):
        check_schema(pa.schema([f for f in good if f.name != "label"]), "f.parquet")


def test_an_integer_exposure_id_column_reads_as_decimal_strings_like_the_other_ids():
    table = pa.Table.from_pylist([{**orjson.loads(_with()), "exposure_id": 12}]).to_batches()[0]
    batch, dead = decode_arrow(table, RULES)
    assert dead == [] and batch.column("exposure_id").to_pylist() == ["12"]
    assert "exposure_id" not in dict(batch.column("cat_features").to_pylist()[0])  # an event field
