"""End to end through `streamlearn replay` / `validate`: the files and faults real teams have.

Warehouse Parquet (integer and dictionary ids, boolean labels, zoned timestamps, flat feature
columns), timestamps in seconds, blank lines, JSON arrays, truncated gzip files and columns of no
usable type: each gets the documented cast, a clear error naming the file and column, or a hint.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consumers.cli import main

N = 4000


def _frame(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 60, n), rng.integers(0, 25, n)
    device = rng.integers(0, 2, n)
    # the label depends mostly on the device: a run that ignored the feature columns would show it
    p = 1 / (1 + np.exp(-(3.0 * (device - 0.5) + 0.3 * (item % 3 - 1))))
    return {
        "i": np.arange(n),
        "user": user,
        "item": item,
        "device": device,
        "price": rng.random(n) * 10,
        "label": rng.random(n) < p,
    }


def _warehouse_table(f: dict[str, np.ndarray]) -> pa.Table:
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    return pa.table(
        {
            "event_id": pa.array([f"e{i}" for i in f["i"]]).dictionary_encode(),
            "ts": pa.array([t0 + dt.timedelta(seconds=int(i)) for i in f["i"]], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array(f["user"], pa.int64()),
            "item_id": pa.array(f["item"], pa.int32()),
            "label": pa.array(f["label"]),
            "device": pa.array(np.array(["ios", "web"])[f["device"]], pa.large_string()),
            "price": pa.array(f["price"]),
            "tags": pa.array([[1, 2]] * len(f["i"])),  # no feature rule for lists
        }
    )


def _replay(path, tmp_path, *extra: str) -> dict:
    out = tmp_path / "summary.json"
    argv = [
        "replay",
        str(path),
        "--no-progress",
        "--summary-json",
        str(out),
        "--dead-letter",
        str(tmp_path / "dl.jsonl"),
    ]
    assert main([*argv, *extra]) == 0
    return json.loads(out.read_text())


def test_warehouse_parquet_is_applied_whole_and_its_flat_feature_columns_are_used(tmp_path, caplog):
    f = _frame()
    path = tmp_path / "warehouse.parquet"
    pq.write_table(_warehouse_table(f), path)
    with caplog.at_level(logging.WARNING, logger="streamlearn.source"):
        summary = _replay(path, tmp_path)
    assert summary["applied"] == N and summary["dead_letters"] == 0
    assert "tags (list<element: int64>)" in caplog.text or "tags (list<item: int64>)" in caplog.text
    assert "warnings" not in summary  # 2024 in microseconds, read right
    # the same events without the feature columns: the device signal is gone
    bare = _warehouse_table(f).drop_columns(["device", "price", "tags"])
    pq.write_table(bare, tmp_path / "bare.parquet")
    without = _replay(tmp_path / "bare.parquet", tmp_path)
    assert summary["learners"]["ftrl"]["auc"] > without["learners"]["ftrl"]["auc"] + 0.1


def test_csv_and_parquet_follow_one_feature_column_rule(tmp_path):
    import pyarrow.csv as pacsv

    f = _frame(1500)
    table = _warehouse_table(f).drop_columns(["tags"])
    plain = table.set_column(0, "event_id", table.column("event_id").cast(pa.string()))
    plain = plain.set_column(1, "ts", pa.array((f["i"] * 1000 + 1_714_521_600_000).astype(np.int64)))
    pq.write_table(plain, tmp_path / "a.parquet")
    pacsv.write_csv(plain, tmp_path / "a.csv")
    by_parquet, by_csv = _replay(tmp_path / "a.parquet", tmp_path), _replay(tmp_path / "a.csv", tmp_path)
    assert by_parquet["applied"] == by_csv["applied"] == 1500
    assert by_parquet["learners"]["ftrl"]["auc"] == pytest.approx(by_csv["learners"]["ftrl"]["auc"], abs=1e-9)


@pytest.mark.parametrize(
    ("column", "array", "message"),
    [
        ("user_id", pa.array([1.5, 2.5]), "column 'user_id' has type double; expected strings or integers"),
        ("label", pa.array(["yes", "no"]), "column 'label' has type string; expected a number or a boolean"),
        ("ts", pa.array([b"x", b"y"]), "column 'ts' has type binary"),
    ],
)
def test_a_column_of_no_usable_type_is_one_error_naming_it_exit_2(tmp_path, capsys, column, array, message):
    cols = {
        "event_id": pa.array(["a", "b"]),
        "ts": pa.array([1, 2]),
        "user_id": pa.array(["u", "v"]),
        "item_id": pa.array(["i", "j"]),
        "label": pa.array([1.0, 0.0]),
    }
    cols[column] = array
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(cols), path)
    for command in ("replay", "validate"):
        assert (
            main([command, str(path), "--no-progress"] if command == "replay" else [command, str(path)]) == 2
        )
        err = capsys.readouterr().err
        assert f"{path}: {message}" in err and "Traceback" not in err


def test_timestamps_in_seconds_are_named_and_ts_unit_reads_them(tmp_path, monkeypatch):
    lines = [
        orjson.dumps(
            {"event_id": f"e{i}", "ts": 1_714_521_600 + i, "user_id": "u", "item_id": "i", "label": i % 2}
        )
        for i in range(300)
    ]
    path = tmp_path / "seconds.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = _replay(path, tmp_path)
    assert summary["warnings"] == [
        "event times read as milliseconds fall in 1970 (ts around 1714521750); they look like seconds: "
        'set events.ts_unit = "s"'
    ]
    monkeypatch.setenv("STREAMLEARN_EVENTS__TS_UNIT", "s")
    assert "warnings" not in _replay(path, tmp_path)


def test_blank_lines_are_counted_not_dead_lettered(tmp_path, capsys):
    lines = [
        orjson.dumps(
            {"event_id": f"e{i}", "ts": 1_714_521_600_000 + i, "user_id": "u", "item_id": "i", "label": 1}
        )
        for i in range(5)
    ]
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n\n".join(lines) + b"\n\n   \n")
    summary = _replay(path, tmp_path)
    assert summary["applied"] == 5 and summary["dead_letters"] == 0 and summary["blank_lines"] == 6
    assert "blank lines       6  (skipped)" in capsys.readouterr().out


def test_a_json_array_file_exits_2_with_a_hint(tmp_path, capsys):
    path = tmp_path / "events.json"
    path.write_text(
        json.dumps([{"event_id": "e1", "ts": 1, "user_id": "u", "item_id": "i", "label": 1}], indent=2)
    )
    assert main(["replay", str(path), "--no-progress"]) == 2
    assert "holds a JSON array; streamlearn reads JSON Lines" in capsys.readouterr().err


def test_a_truncated_gzip_file_fails_naming_the_line_after_a_snapshot_that_a_resume_continues(
    tmp_path, capsys
):
    lines = [
        orjson.dumps(
            {
                "event_id": f"e{i}",
                "ts": 1_714_521_600_000 + i,
                "user_id": f"u{i % 7}",
                "item_id": "i",
                "label": i % 2,
            }
        )
        for i in range(20_000)
    ]
    whole = gzip.compress(b"\n".join(lines) + b"\n")
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    state = tmp_path / "state"
    argv = [
        "replay",
        str(path),
        "--no-progress",
        "--state-dir",
        str(state),
        "--dead-letter",
        str(tmp_path / "dl.jsonl"),
    ]
    assert main([*argv, "--summary-json", str(tmp_path / "first.json")]) == 1
    err = capsys.readouterr().err
    assert f"{path}: the compressed file is truncated or corrupt after line" in err and "Traceback" not in err
    first = json.loads((tmp_path / "first.json").read_text())
    assert 0 < first["applied"] < 20_000 and first["dead_letters"] == 0
    path.write_bytes(whole)  # the complete file arrives
    assert main([*argv, "--summary-json", str(tmp_path / "second.json")]) == 0
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["applied"] == 20_000 and second["duplicates"] == 0  # the rest, exactly once
    assert second["records_this_run"] == 20_000 - first["applied"]


# --------------------------------------------------------------------------- the learners of a state dir


def _stream(tmp_path, n: int = 3000):
    path = tmp_path / "events.jsonl"
    rng = np.random.default_rng(1)
    path.write_bytes(
        b"\n".join(
            orjson.dumps(
                {
                    "event_id": f"e{i}",
                    "ts": 1_714_521_600_000 + i,
                    "user_id": f"u{rng.integers(40)}",
                    "item_id": f"i{rng.integers(12)}",
                    "label": int(rng.random() < 0.3),
                }
            )
            for i in range(n)
        )
        + b"\n"
    )
    return path


def _state_replay(path, tmp_path, learners: list[str], *extra: str) -> tuple[int, dict | None]:
    out = tmp_path / "summary.json"
    out.unlink(missing_ok=True)
    argv = [
        "replay",
        str(path),
        "--no-progress",
        "--state-dir",
        str(tmp_path / "state"),
        "--summary-json",
        str(out),
    ]
    argv += [
        "--dead-letter",
        str(tmp_path / "dl.jsonl"),
        *[a for k in learners for a in ("--learner", k)],
        *extra,
    ]
    rc = main(argv)
    return rc, (json.loads(out.read_text()) if out.exists() else None)


def test_adding_a_learner_keeps_the_others_state_and_starts_the_new_one_cold(tmp_path, capsys):
    from state.snapshot import SnapshotStore

    path = _stream(tmp_path)
    assert _state_replay(path, tmp_path, ["ftrl"], "--limit", "2000")[0] == 0
    champion = SnapshotStore(tmp_path / "state").latest_valid()[1]["ftrl"].arrays["z"].copy()
    capsys.readouterr()
    rc, summary = _state_replay(path, tmp_path, ["ftrl", "beta_ts"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "learner 'beta_ts' is new: it starts without stored state" in err
    assert summary["records_this_run"] == 1000 and summary["applied"] == 3000
    assert summary["learners"]["beta_ts"]["n"] == 1000  # the challenger saw only the new events
    # the champion went on from its state: equal to a straight run of ftrl alone
    straight = tmp_path / "straight"
    straight.mkdir()
    _state_replay(path, straight, ["ftrl"])
    after = SnapshotStore(tmp_path / "state").latest_valid()[1]["ftrl"].arrays["z"]
    expected = SnapshotStore(straight / "state").latest_valid()[1]["ftrl"].arrays["z"]
    assert not np.array_equal(after, champion) and np.array_equal(after, expected)


def test_removing_a_learner_drops_its_state_with_a_note(tmp_path, capsys):
    path = _stream(tmp_path)
    assert _state_replay(path, tmp_path, ["ftrl", "beta_ts"], "--limit", "2000")[0] == 0
    capsys.readouterr()
    rc, summary = _state_replay(path, tmp_path, ["ftrl"])
    assert rc == 0 and set(summary["learners"]) == {"ftrl"}
    assert "learner 'beta_ts' is no longer configured: its stored state is dropped" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("learners", "extra_env", "message"),
    [
        (["ftrl:alpha=0.2"], {}, "learner 'ftrl' has other parameters (alpha: '<unset>' -> 0.2)"),
        (
            ["ftrl"],
            {"STREAMLEARN_FEATURES__STANDARDIZE": "false"},
            "[features] changed (standardize: True -> False)",
        ),
        (
            ["ftrl"],
            {"STREAMLEARN_EVENTS__TS_UNIT": "s"},
            "events.ts_unit: 'ms' -> 's' changes what the stored times mean",
        ),
    ],
)
def test_a_change_that_alters_stored_state_is_refused_saying_what_changed(
    tmp_path, capsys, monkeypatch, learners, extra_env, message
):
    path = _stream(tmp_path)
    assert _state_replay(path, tmp_path, ["ftrl"], "--limit", "2000")[0] == 0
    capsys.readouterr()
    for key, value in extra_env.items():
        monkeypatch.setenv(key, value)
    rc, _ = _state_replay(path, tmp_path, learners)
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "start a new state dir" in err and "Traceback" not in err
