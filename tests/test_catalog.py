"""The DuckDB catalog over all snapshots, and the ``streamlearn state`` command."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import duckdb
import pytest

from consumers.cli import main
from pipeline.learners.ftrl import FTRL
from pipeline.learners.river_adapter import RiverLearner
from pipeline.runner import Runner
from state.catalog import Catalog
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore
from tests.test_conformance import batches, make_events

EVENTS = make_events(600, seed=11)
RIVER = "river:linear_model.LogisticRegression"


def make_runner(*observers) -> Runner:
    return Runner([FTRL(bits=8), RiverLearner()], window=100, report_every=100, observers=observers)


def fill(
    state_dir: Path, upto: int = 600, keep: int = 50, catalog: bool = False, drift=None
) -> SnapshotStore:
    """Snapshots every 200 events of a two-learner run."""
    with Checkpointer(
        SnapshotStore(state_dir, keep=keep),
        "h",
        every_events=200,
        background=False,
        catalog=catalog,
        drift_source=drift,
    ) as ckpt:
        runner = make_runner(ckpt)
        for raw in batches(EVENTS[:upto]):
            runner.process(raw)
    return ckpt.store


def rows(con, sql: str) -> list[tuple]:
    return con.sql(sql).fetchall()


# ------------------------------------------------------------------------------------ catalog


def test_catalog_has_snapshots_positions_learners_and_metrics(tmp_path: Path):
    fill(tmp_path)
    con = Catalog(tmp_path).connect()
    assert rows(con, "SELECT seq, events_applied, status FROM snapshots ORDER BY seq") == [
        (1, 200, "ok"),
        (2, 400, "ok"),
        (3, 600, "ok"),
    ]
    assert rows(con, "SELECT snapshot_seq, source, position FROM positions ORDER BY 1") == [
        (1, "stream", 200),
        (2, "stream", 400),
        (3, "stream", 600),
    ]
    assert rows(con, "SELECT DISTINCT learner, kind FROM learners ORDER BY 1") == [
        ("_runner", "runner"),
        ("ftrl", "ftrl"),
        (RIVER, "river"),
    ]
    assert rows(con, "SELECT arrays FROM learners WHERE learner = 'ftrl' AND snapshot_seq = 1") == [
        (["n", "z"],)
    ]
    metrics = rows(con, "SELECT learner, events, n FROM metrics WHERE learner = 'ftrl' ORDER BY events")
    assert metrics == [("ftrl", e, 100) for e in range(100, 700, 100)]
    assert rows(con, "SELECT count(*) FROM drift_events") == [(0,)]


def test_each_learner_table_is_a_view_across_snapshots(tmp_path: Path):
    fill(tmp_path)
    con = Catalog(tmp_path).connect()
    index = dict(
        con.execute("SELECT table_name, name FROM catalog_tables WHERE learner = ?", [RIVER]).fetchall()
    )
    assert index == {"model": "river_linear_model_logisticregression__model"}
    got = rows(
        con, "SELECT snapshot_seq, length(json) > 100 FROM river_linear_model_logisticregression__model"
    )
    assert sorted(got) == [(1, True), (2, True), (3, True)]
    window = rows(con, "SELECT snapshot_seq, count(*) FROM _runner__window_ftrl GROUP BY 1 ORDER BY 1")
    assert window == [(1, 100), (2, 100), (3, 100)]


def test_metric_history_survives_pruning(tmp_path: Path):
    store = fill(tmp_path, keep=1)
    assert store.seqs() == [3]
    con = Catalog(tmp_path).connect()
    assert rows(con, "SELECT count(*) FROM metrics WHERE learner = 'ftrl'") == [(6,)]
    assert rows(con, "SELECT DISTINCT snapshot_seq FROM metrics ORDER BY 1") == [(1,), (2,), (3,)]
    assert rows(con, "SELECT seq FROM snapshots") == [(3,)]


def test_rows_replayed_after_a_restore_from_an_older_snapshot_appear_once(tmp_path: Path):
    store = fill(tmp_path, upto=400)
    (store.path(2) / "ftrl" / "z.npy").write_bytes(b"corrupt")  # newest invalid: restore falls back to 1
    with Checkpointer(
        SnapshotStore(tmp_path), "h", every_events=200, background=False, catalog=False
    ) as ckpt:
        runner = make_runner(ckpt)
        assert ckpt.restore(runner)["seq"] == 1
        for raw in batches(EVENTS[200:400], first_row=200):
            runner.process(raw)
    con = Catalog(tmp_path).connect()
    got = rows(con, "SELECT events, snapshot_seq FROM metrics WHERE learner = 'ftrl' ORDER BY events")
    assert got == [(100, 1), (200, 1), (300, 3), (400, 3)]


def test_drift_events_are_queryable(tmp_path: Path):
    alarms = iter([[{"ts_ms": 5, "events": 150, "signal": "loss:ftrl", "detector": "adwin", "score": 3.5}]])
    fill(tmp_path, drift=lambda: next(alarms, []))
    con = Catalog(tmp_path).connect()
    assert rows(con, "SELECT events, signal, detector, score, snapshot_seq FROM drift_events") == [
        (150, "loss:ftrl", "adwin", 3.5, 1)
    ]


def test_unreadable_parquet_is_left_out_of_the_catalog(tmp_path: Path, caplog):
    store = fill(tmp_path)
    path = store.path(2) / "_runner" / "features.parquet"
    path.write_bytes(path.read_bytes()[:10])
    with caplog.at_level(logging.WARNING, logger="state.catalog"):
        con = Catalog(tmp_path).connect()
    assert "catalog skips unreadable" in caplog.text
    assert rows(con, "SELECT DISTINCT snapshot_seq FROM _runner__features ORDER BY 1") == [(1,), (3,)]


def test_checkpointer_refreshes_the_catalog_file(tmp_path: Path):
    fill(tmp_path, upto=400, catalog=True)
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True)
    try:
        assert rows(con, "SELECT max(seq) FROM snapshots") == [(2,)]
        assert rows(con, "SELECT max(events) FROM metrics") == [(400,)]
    finally:
        con.close()


def test_empty_state_dir_gives_empty_typed_tables(tmp_path: Path):
    con = Catalog(tmp_path).connect()
    assert rows(con, "SELECT count(*), max(auc) FROM metrics") == [(0, None)]
    assert rows(con, "SELECT count(*) FROM snapshots") == [(0,)]


# ------------------------------------------------------------------------------------ the CLI


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["state", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_state_list_in_every_format(tmp_path: Path, capsys):
    fill(tmp_path)
    code, out, _ = cli(capsys, "list", "--state-dir", str(tmp_path))
    assert code == 0 and out.splitlines()[0].split() == [
        "seq",
        "created_at",
        "events_applied",
        "bytes",
        "files",
        "learners",
        "status",
    ]
    assert "(3 rows)" in out
    code, out, _ = cli(capsys, "list", "--state-dir", str(tmp_path), "--format", "json")
    listed = json.loads(out)
    assert [r["seq"] for r in listed] == [1, 2, 3] and listed[0]["learners"] == f"ftrl,{RIVER}"
    code, out, _ = cli(capsys, "list", "--state-dir", str(tmp_path), "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["events_applied"] for r in table] == ["200", "400", "600"]


def test_state_show_gives_the_manifest(tmp_path: Path, capsys):
    store = fill(tmp_path)
    code, out, _ = cli(capsys, "show", "2", "--state-dir", str(tmp_path), "--format", "json")
    assert code == 0 and json.loads(out) == store.read_manifest(2)
    code, out, _ = cli(capsys, "show", "--state-dir", str(tmp_path))
    assert code == 0 and "position stream" in out and "600" in out and "file ftrl/z.npy" in out


def test_state_query_runs_sql_over_all_snapshots(tmp_path: Path, capsys):
    fill(tmp_path)
    sql = "SELECT learner, max(events) AS events FROM metrics GROUP BY learner ORDER BY learner"
    code, out, _ = cli(capsys, "query", sql, "--state-dir", str(tmp_path), "--format", "csv")
    assert code == 0 and out.splitlines() == ["learner,events", "ftrl,600", f"{RIVER},600"]
    code, out, _ = cli(
        capsys,
        "query",
        "SELECT 1 AS a, 1 AS a, 'nan'::DOUBLE AS x",
        "--state-dir",
        str(tmp_path),
        "--format",
        "json",
    )
    assert json.loads(out) == [{"a": 1, "x": None}]


def test_state_verify_exits_1_on_a_corrupt_snapshot(tmp_path: Path, capsys):
    store = fill(tmp_path)
    assert cli(capsys, "verify", "--state-dir", str(tmp_path))[0] == 0
    (store.path(2) / "metrics.parquet").write_bytes(b"PAR1")
    code, out, err = cli(capsys, "verify", "--state-dir", str(tmp_path), "--format", "json")
    report = {r["seq"]: r for r in json.loads(out)}
    assert code == 1 and "1 of 3 snapshots failed verification" in err
    assert report[2]["status"] == "CORRUPT" and "metrics.parquet" in report[2]["problems"]
    assert report[1]["status"] == report[3]["status"] == "ok"
    assert cli(capsys, "verify", "3", "--state-dir", str(tmp_path))[0] == 0


def test_state_prune_keeps_the_newest(tmp_path: Path, capsys):
    store = fill(tmp_path)
    code, out, _ = cli(
        capsys, "prune", "--keep", "1", "--dry-run", "--state-dir", str(tmp_path), "--format", "csv"
    )
    assert (
        code == 0
        and out.splitlines()[1:] == ["1,would remove", "2,would remove"]
        and store.seqs() == [1, 2, 3]
    )
    code, out, _ = cli(capsys, "prune", "--keep", "1", "--state-dir", str(tmp_path), "--format", "csv")
    assert code == 0 and store.seqs() == [3] and (tmp_path / "catalog.duckdb").exists()


def test_state_prune_is_refused_while_a_worker_writes(tmp_path: Path, capsys):
    store = fill(tmp_path)
    with Checkpointer(SnapshotStore(tmp_path), "h", background=False, catalog=False):
        code, _, err = cli(capsys, "prune", "--keep", "1", "--state-dir", str(tmp_path))
    assert code == 1 and "in use by another writer" in err and store.seqs() == [1, 2, 3]


def test_state_dir_from_the_environment(tmp_path: Path, capsys, monkeypatch):
    fill(tmp_path, upto=200)
    monkeypatch.setenv("STREAMLEARN_SNAPSHOT__DIR", str(tmp_path))
    code, out, _ = cli(capsys, "list", "--format", "json")
    assert code == 0 and [r["seq"] for r in json.loads(out)] == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["list", "--state-dir", "/nonexistent/state"],
            "--state-dir '/nonexistent/state' is not a directory",
        ),
        (["show", "9"], "no snapshot 9 in"),
        (["show", "latest-ish"], "SEQ must be a snapshot number or 'latest'"),
        (["query", "SELEC nonsense"], "invalid SQL query"),
        (["query", "SELECT * FROM no_such_table"], "invalid SQL query"),
        (["prune", "--keep", "0"], "--keep must be >= 1, got 0"),
    ],
)
def test_state_usage_errors_exit_2_and_name_the_argument(tmp_path: Path, capsys, args, message):
    fill(tmp_path, upto=200)
    if "--state-dir" not in args:
        args = [*args, "--state-dir", str(tmp_path)]
    code, _, err = cli(capsys, *args)
    assert code == 2 and message in err


def test_state_without_any_state_dir_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("STREAMLEARN_SNAPSHOT__DIR", raising=False)
    code, _, err = cli(capsys, "list")
    assert code == 2 and "--state-dir is required" in err
