"""End to end: `streamlearn replay` / `validate` on a generated stream, exit codes and messages."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from sklearn.metrics import roc_auc_score

from consumers.cli import main


def _write_stream(path, n=6000, seed=0, bad=()):
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    user_bias, item_bias = rng.normal(size=50), 1.5 * rng.normal(size=30)
    lines = []
    for i in range(n):
        u, it = int(rng.integers(50)), int(rng.integers(30))
        p = 1 / (1 + np.exp(-(users[u] @ items[it] + user_bias[u] + item_bias[it])))
        ev = {
            "event_id": f"e{i}",
            "ts": 1_700_000_000_000 + i * 100,
            "user_id": f"u{u}",
            "item_id": f"i{it}",
            "label": int(rng.random() < p),
            "features": {"device": ["ios", "web"][i % 2], "price": float(it)},
        }
        lines.append(orjson.dumps(ev))
    for pos, rec in bad:
        lines.insert(pos, rec)
    path.write_bytes(b"\n".join(lines) + b"\n")


BAD = [
    (10, b"not json"),
    (500, b'{"event_id": "x"}'),
    (3000, b'{"event_id":"y","ts":1,"user_id":"u","item_id":"i","label":NaN}'),
]


def test_replay_applies_valid_events_and_dead_letters_the_rest(tmp_path, capsys):
    stream = tmp_path / "s.jsonl"
    _write_stream(stream, bad=BAD)
    dlq, summary = tmp_path / "dlq.jsonl", tmp_path / "summary.json"
    rc = main(
        [
            "replay",
            str(stream),
            "--batch-size",
            "200",
            "--dead-letter",
            str(dlq),
            "--summary-json",
            str(summary),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = json.loads(summary.read_text())
    assert out["applied"] == 6000 and out["dead_letters"] == 3 and out["records"] == 6003
    assert out["dead_letters_by_reason"] == {"malformed_json": 1, "missing_field": 1, "non_finite": 1}
    dead = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [d["origin"]["line"] for d in dead] == [11, 501, 3001]
    assert out["learners"]["ftrl"]["auc"] > 0.6
    assert "events applied    6,000" in capsys.readouterr().out


def test_replay_windowed_auc_equals_sklearn_on_logged_predictions(tmp_path):
    from pipeline.config import load_config
    from pipeline.runner import RawBatch, Runner

    stream = tmp_path / "s.jsonl"
    _write_stream(stream, n=3000)
    runner = Runner.from_config(load_config(overrides={"evaluation": {"window": 1000}}, environ={}))
    preds, labels = [], []
    lines = stream.read_bytes().splitlines()
    for i in range(0, len(lines), 250):
        res = runner.process(RawBatch(values=lines[i : i + 250]))
        preds.append(res.predictions["ftrl"])
        labels.append(res.events.label)
    p, y = np.concatenate(preds)[-1000:], np.concatenate(labels)[-1000:]
    assert runner.summary()["learners"]["ftrl"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_replay_duplicates_are_skipped_and_counted(tmp_path):
    stream = tmp_path / "s.jsonl"
    _write_stream(stream, n=100)
    lines = stream.read_bytes().splitlines()
    stream.write_bytes(b"\n".join(lines + lines[:10]) + b"\n")
    summary = tmp_path / "summary.json"
    assert (
        main(
            [
                "replay",
                str(stream),
                "--summary-json",
                str(summary),
                "--no-progress",
                "--dead-letter",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    out = json.loads(summary.read_text())
    assert out["applied"] == 100 and out["duplicates"] == 10


def test_replay_limit_stops_early(tmp_path):
    stream = tmp_path / "s.jsonl"
    _write_stream(stream, n=1000)
    summary = tmp_path / "summary.json"
    args = [
        "replay",
        str(stream),
        "--limit",
        "400",
        "--batch-size",
        "100",
        "--summary-json",
        str(summary),
        "--no-progress",
    ]
    assert main([*args, "--dead-letter", str(tmp_path / "d")]) == 0
    assert json.loads(summary.read_text())["applied"] == 400


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learner", "nonsense"], "unknown learner kind 'nonsense'"),
        (["--learner", "river:linear_model.Nope"], "river has no estimator"),
        (["--batch-size", "0"], "'source.batch_size'"),
    ],
)
def test_replay_configuration_errors_exit_2_naming_the_problem(tmp_path, capsys, args, message):
    stream = tmp_path / "s.jsonl"
    _write_stream(stream, n=10)
    assert main(["replay", str(stream), *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_replay_missing_file_exits_2(capsys):
    assert main(["replay", "/nonexistent.jsonl"]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_replay_bad_config_file_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[source]\nbatch_sise = 3\n")
    stream = tmp_path / "s.jsonl"
    _write_stream(stream, n=10)
    assert main(["replay", str(stream), "--config", str(cfg)]) == 2
    assert "unknown key 'source.batch_sise' (did you mean 'source.batch_size'?)" in capsys.readouterr().err


def test_validate_lists_every_invalid_record(tmp_path, capsys):
    stream = tmp_path / "s.jsonl"
    _write_stream(stream, n=600, bad=BAD[:2])
    assert main(["validate", str(stream)]) == 0
    captured = capsys.readouterr()
    assert f"{stream}:11: malformed_json" in captured.out
    assert f"{stream}:501: missing_field: missing required field 'ts'" in captured.out
    assert "602 records, 600 valid, 2 invalid" in captured.err
    assert main(["validate", str(stream), "--strict"]) == 1


def test_river_learner_runs_beside_ftrl(tmp_path):
    stream = tmp_path / "s.jsonl"
    _write_stream(stream, n=2000)
    summary = tmp_path / "summary.json"
    args = ["replay", str(stream), "--learner", "ftrl", "--learner", "river:linear_model.LogisticRegression"]
    args += [
        "--batch-size",
        "100",
        "--summary-json",
        str(summary),
        "--no-progress",
        "--dead-letter",
        str(tmp_path / "d"),
    ]
    assert main(args) == 0
    learners = json.loads(summary.read_text())["learners"]
    assert set(learners) == {"ftrl", "river:linear_model.LogisticRegression"}
    assert all(m["auc"] > 0.5 for m in learners.values())
