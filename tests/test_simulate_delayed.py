"""Tests of the simulator's delayed-feedback mode: exposures, outcome records, delays, event-time order."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from consumers.commands import simulate as cmd
from pipeline.errors import ConfigError
from pipeline.events import EventRules, decode_arrow, decode_json
from pipeline.events.columns import GROUND_TRUTH_COLUMNS, check_schema
from pipeline.simulate import Drift, SimConfig, Simulator, to_json_lines
from pipeline.simulation.records import DELAY_TRUTH_FIELDS, TRUTH_FIELDS, _to_json_lines_slow, sim_schema
from pipeline.simulation.stream import BLOCK_REQUESTS

SMALL = {"n_users": 300, "n_items": 60}
DELAYED = {"feedback": "delayed", **SMALL}


def _table(sim: Simulator, n: int, **kwargs) -> pa.Table:
    return pa.Table.from_batches(
        list(sim.batches(n, **kwargs)),
        schema=sim_schema(kwargs.get("include_truth", False), sim.config.feedback),
    )


def _split(t: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(exposures, outcomes) of a delayed-mode table."""
    is_click = pc.equal(t.column("event_type"), "click")
    return t.filter(pc.invert(is_click)), t.filter(is_click)


def _rows(t: pa.Table, *names: str) -> list[tuple]:
    return list(zip(*(t.column(n).to_pylist() for n in names)))


def _delays_s(t: pa.Table) -> np.ndarray:
    """Each outcome's ts minus its exposure's ts, in seconds, matched by (request_id, item_id)."""
    exp, out = _split(t)
    ts_of = {(r, i): ts for r, i, ts in _rows(exp, "request_id", "item_id", "ts")}
    return np.array([ts - ts_of[r, i] for r, i, ts in _rows(out, "request_id", "item_id", "ts")]) / 1000.0


# --------------------------------------------------------------------------- the default is unchanged

_FLOAT = re.compile(rb"-?\d+\.\d+(?:[eE][-+]?\d+)?")


def _six_decimals(m: re.Match) -> bytes:
    return b"%.6f" % float(m.group())


def test_default_feedback_is_joined_and_its_output_is_pinned_byte_for_byte():
    assert SimConfig().feedback == "joined"
    kw = dict(seed=3, slate_size=2, drifts=(Drift(6000, "abrupt"),), **SMALL)
    h = hashlib.sha256()
    for c in Simulator(**kw).json_chunks(20_000, invalid_fraction=0.01, include_truth=True):
        h.update(b"\n".join(_FLOAT.sub(_six_decimals, line) for line in c.lines) + b"\n")
    # the digest of this stream as the simulator wrote it before the delayed mode existed (commit
    # 399daa1): every id, label, position, candidate and category exactly, every real number to 6
    # decimals (numpy's SIMD exp/log and the BLAS kernel differ in the last bit from one CPU to
    # another: the full-precision digest pinned on an AVX-512 machine failed on an AVX2 one)
    assert h.hexdigest() == "1daaec9250f09355d8dd1b252ac893fa4edaee0a090a3a4c422f2b251b639273"
    explicit = _table(Simulator(feedback="joined", **kw), 20_000, include_truth=True)
    assert explicit.equals(_table(Simulator(**kw), 20_000, include_truth=True))
    assert explicit.schema.names[-2:] == ["p_click", "p_best"]
    assert set(explicit.column("event_type").to_pylist()) == {"impression"}


# --------------------------------------------------------------------------- outcomes are the joined clicks


def test_delayed_exposures_are_the_joined_impressions_with_label_zero_and_outcomes_their_clicks():
    joined = _table(Simulator(seed=1, **SMALL), 30_000)
    delayed = _table(Simulator(seed=1, **DELAYED), 30_000)
    exp, out = _split(delayed)
    labels = joined.column("label").to_numpy()
    assert exp.num_rows == 30_000 and out.num_rows == int(labels.sum()) > 1000
    assert exp.column("label").to_numpy().max() == 0.0
    for name in ("event_id", "ts", "user_id", "item_id", "position", "propensity", "request_id", "features"):
        assert exp.column(name).equals(joined.column(name)), name
    fields = ("event_id", "request_id", "item_id", "user_id")
    clicked = joined.filter(pa.array(labels > 0))
    expected = {"o" + e[1:]: tuple(rest) for e, *rest in _rows(clicked, *fields)}
    assert {e: tuple(rest) for e, *rest in _rows(out, *fields)} == expected
    assert set(out.column("label").to_pylist()) == {1.0}
    for name in ("position", "propensity", "candidates", "features"):
        assert out.column(name).null_count == out.num_rows, name


@pytest.mark.parametrize("slate_size", [1, 3])
def test_every_outcome_follows_exactly_one_earlier_exposure_by_its_truth_delay(slate_size):
    t = _table(Simulator(seed=2, slate_size=slate_size, **DELAYED), 20_000, include_truth=True)
    rows = t.to_pylist()
    seen: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["event_type"] == "impression":
            seen.setdefault((r["request_id"], r["item_id"]), []).append(r)
            continue
        (exposure,) = seen[(r["request_id"], r["item_id"])]  # exactly one, and earlier in the log
        assert r["user_id"] == exposure["user_id"] and r["event_id"] == "o" + exposure["event_id"][1:]
        assert exposure["clicked"] == 1 and r["ts"] == exposure["ts"] + exposure["delay_ms"] > exposure["ts"]
        assert all(r[f.name] is None for f in (*TRUTH_FIELDS, *DELAY_TRUTH_FIELDS))
    exposures = [r for r in rows if r["event_type"] == "impression"]
    assert all((e["delay_ms"] is None) == (e["clicked"] == 0) for e in exposures)
    assert sum(e["clicked"] for e in exposures) == len(rows) - len(exposures)


# --------------------------------------------------------------------------- event-time order


@pytest.mark.parametrize("delay", ["exponential", "heavy_tailed"])
def test_ts_never_decreases_over_the_whole_log_across_chunks_and_blocks(delay):
    sim = Simulator(seed=3, delay=delay, delay_median_s=120.0, **DELAYED)
    n = 3 * BLOCK_REQUESTS + 500  # several internal blocks, the last one cut short
    batches = list(sim.batches(n, chunk_size=1_000))
    assert len(batches) > 25 and all(b.num_rows == 1_000 for b in batches[:-1])
    ts = np.concatenate([b.column("ts").to_numpy() for b in batches])
    assert np.all(np.diff(ts) >= 0)
    t = pa.Table.from_batches(batches)
    assert t.equals(_table(sim, n, chunk_size=50_000))  # the rows do not depend on chunk_size
    exp, out = _split(t)
    assert exp.num_rows == n
    assert out.num_rows == int(_table(Simulator(seed=3, **SMALL), n).column("label").to_numpy().sum())
    chunks = list(sim.json_chunks(n))
    lines = [line for c in chunks for line in c.lines]
    assert [orjson.loads(x)["event_id"] for x in lines] == t.column("event_id").to_pylist()
    assert sum(c.n_events for c in chunks) == n and sum(c.n_outcomes for c in chunks) == out.num_rows


def test_late_exposures_keep_their_place_and_outcomes_still_follow_their_exposure():
    sim = Simulator(seed=4, late_fraction=0.05, **DELAYED)
    t = _table(sim, 20_000)
    exp, out = _split(t)
    joined = _table(Simulator(seed=4, late_fraction=0.05, **SMALL), 20_000)
    assert exp.column("event_id").equals(joined.column("event_id"))
    ids = t.column("event_id").to_pylist()
    where = {e: i for i, e in enumerate(ids)}
    assert all(where["e" + o[1:]] < where[o] for o in out.column("event_id").to_pylist())


# --------------------------------------------------------------------------- delays


def test_exponential_median_delay_is_delay_median_s():
    for median in (30.0, 600.0):
        d = _delays_s(_table(Simulator(seed=5, delay_median_s=median, **DELAYED), 40_000))
        assert len(d) > 10_000 and d.min() > 0
        assert abs(np.median(d) - median) < 0.1 * median, (median, np.median(d))
        assert abs(np.quantile(d, 0.9) - median * np.log(10) / np.log(2)) < 0.15 * median * 3.32


def test_heavy_tailed_has_the_median_and_a_tail_of_hours():
    d = _delays_s(_table(Simulator(seed=6, delay="heavy_tailed", **DELAYED), 60_000))
    cfg = SimConfig(delay="heavy_tailed")
    assert len(d) > 15_000
    assert abs(np.median(d) - cfg.delay_median_s) < 0.1 * cfg.delay_median_s
    p99 = np.quantile(d, 0.99)
    assert p99 > 4 * 3600 and p99 > 500 * np.median(d)  # ~11 h against 30 s
    # half the tail's share comes later than the tail's median (the body is spent by then)
    late = (d > cfg.delay_tail_median_s).mean()
    assert abs(late - cfg.delay_tail_fraction / 2) < 0.01


def test_unattributed_clicks_have_no_outcome_but_keep_clicked_in_the_truth():
    t = _table(Simulator(seed=7, unattributed_fraction=0.3, **DELAYED), 30_000, include_truth=True)
    exp, out = _split(t)
    clicked = exp.column("clicked").to_numpy()
    lost = (clicked == 1) & np.asarray(exp.column("delay_ms").is_null())
    assert out.num_rows == int(clicked.sum() - lost.sum())
    assert abs(lost.sum() / clicked.sum() - 0.3) < 0.03
    joined = _table(Simulator(seed=7, **SMALL), 30_000)
    np.testing.assert_array_equal(clicked, joined.column("label").to_numpy())


# --------------------------------------------------------------------------- decoding, determinism


def test_delayed_output_decodes_in_arrow_and_json_without_dead_letters_and_truth_is_no_feature():
    sim = Simulator(seed=8, delay="heavy_tailed", **DELAYED)
    t = _table(sim, 20_000, include_truth=True).combine_chunks()
    events, dead = decode_arrow(t.to_batches()[0], EventRules())
    assert dead == [] and len(events) == t.num_rows
    lines = [line for c in sim.json_chunks(20_000, include_truth=True) for line in c.lines]
    from_json, dead_json = decode_json(lines, EventRules())
    assert dead_json == [] and len(from_json) == t.num_rows
    for name in ("event_id", "ts", "user_id", "item_id", "label", "event_type", "position", "request_id"):
        assert from_json.column(name).equals(events.column(name)), name
    for decoded in (events, from_json):
        names = {k for row in decoded.column("num_features").to_pylist() for k, _ in row}
        assert names == {"hour", "price"}  # never p_click, p_best, clicked or delay_ms
        is_click = np.array(decoded.strings("event_type")) == "click"
        assert decoded.label[is_click].min() == 1.0 and decoded.label[~is_click].max() == 0.0
        assert all(not row for row in decoded.column("cat_features").filter(pa.array(is_click)).to_pylist())
    assert GROUND_TRUTH_COLUMNS == {f.name for f in (*TRUTH_FIELDS, *DELAY_TRUTH_FIELDS)}
    assert check_schema(t.schema, "sim.parquet") == []


def test_fast_json_lines_of_rows_with_nulls_equal_the_row_by_row_writer():
    block = next(
        Simulator(seed=9, **DELAYED).batches(BLOCK_REQUESTS, include_truth=True, chunk_size=BLOCK_REQUESTS)
    )
    assert pc.sum(pc.equal(block.column("event_type"), "click")).as_py() > 0
    fast, slow = to_json_lines(block), _to_json_lines_slow(block)
    assert [orjson.loads(x) for x in fast] == [orjson.loads(x) for x in slow]
    outcome = next(x for x in fast if b'"click"' in x)
    assert b"position" not in outcome and b"features" not in outcome and b"p_click" not in outcome


def test_delayed_same_seed_same_records_other_seed_different():
    kw = dict(delay="heavy_tailed", **DELAYED)
    a = _table(Simulator(seed=10, **kw), 12_000, include_truth=True)
    b = _table(Simulator(seed=10, **kw), 12_000, include_truth=True)
    c = _table(Simulator(seed=11, **kw), 12_000, include_truth=True)
    assert a.equals(b)
    assert a.column("ts") != c.column("ts")
    lines = [[x for ch in Simulator(seed=10, **kw).json_chunks(12_000) for x in ch.lines] for _ in range(2)]
    assert lines[0] == lines[1]


def test_delayed_invalid_injection_dead_letters_exactly_the_injected_records():
    sim = Simulator(seed=12, **DELAYED)
    clean = _table(sim, 15_000)
    dirty = _table(sim, 15_000, invalid_fraction=0.03)
    ids = dirty.column("event_id").to_pylist()
    keep = [i for i, e in enumerate(ids) if e is not None and not e.startswith("bad-")]
    assert dirty.take(keep).equals(clean)
    chunks = list(sim.json_chunks(15_000, invalid_fraction=0.03))
    lines = [line for c in chunks for line in c.lines]
    _, dead = decode_json(lines, EventRules())
    assert [d.index for d in dead] == np.flatnonzero(np.concatenate([c.invalid for c in chunks])).tolist()
    assert sum(c.n_events for c in chunks) == 15_000
    assert sum(c.n_outcomes for c in chunks) == _split(clean)[1].num_rows


# --------------------------------------------------------------------------- configuration and command line


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feedback": "later"}, "feedback must be one of joined, delayed, got 'later'"),
        ({"delay": "weibull"}, "delay must be one of exponential, heavy_tailed"),
        ({"delay_median_s": 0.0}, "delay_median_s must be > 0"),
        ({"delay": "heavy_tailed", "delay_tail_fraction": 0.5}, r"delay_tail_fraction must be in \[0, 0.5\)"),
        (
            {"delay": "heavy_tailed", "delay_tail_median_s": 10.0},
            "delay_tail_median_s must be >= delay_median_s",
        ),
        ({"delay": "heavy_tailed", "delay_tail_sigma": 0.0}, "delay_tail_sigma must be > 0"),
        ({"unattributed_fraction": 1.0}, r"unattributed_fraction must be in \[0, 1\)"),
    ],
)
def test_sim_config_bad_feedback_setting_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SimConfig(**kwargs)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlearn")
    cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["simulate", *argv])


@pytest.mark.parametrize("suffix", ["parquet", "jsonl.gz"])
def test_cli_delayed_writes_a_time_ordered_log_that_decodes(tmp_path, capsys, suffix):
    out = tmp_path / f"d.{suffix}"
    argv = "--events 4000 --items 40 --drift none --run-id r1 --feedback delayed --delay heavy_tailed".split()
    args = _parse(*argv, "--delay-median-s", "60", "--truth", "--invalid-fraction", "0.01", "--out", str(out))
    assert cmd.run(args) == 0
    err = capsys.readouterr().err
    if suffix == "parquet":
        t = pq.read_table(out)
        assert t.schema.names[-4:] == ["p_click", "p_best", "clicked", "delay_ms"]
        events, dead = decode_arrow(t.combine_chunks().to_batches()[0], EventRules())
    else:
        events, dead = decode_json(gzip.decompress(out.read_bytes()).splitlines(), EventRules())
    clicks = int((np.array(events.strings("event_type")) == "click").sum())
    assert len(events) == 4000 + clicks and clicks > 500 and len(dead) > 0
    assert f"4,000 events + {clicks:,} outcomes + {len(dead):,} invalid" in err
    assert "heavy_tailed delays, median 60 s" in err
    assert np.all(np.diff(events.ts) >= 0)
    assert events.column("event_id").to_pylist()[0] == "r1-e0"
    assert any(e.startswith("r1-o") for e in events.column("event_id").to_pylist())


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--delay", "heavy_tailed"], "--delay"),
        (["--delay-median-s", "5"], "--delay-median-s"),
        (["--feedback", "delayed", "--delay-tail-sigma", "2"], "--delay-tail-sigma"),
        (["--feedback", "delayed", "--delay-median-s", "0"], "--delay-median-s"),
        (
            ["--feedback", "delayed", "--delay", "heavy_tailed", "--delay-tail-median-s", "1"],
            "--delay-tail-median-s",
        ),
        (["--feedback", "delayed", "--unattributed-fraction", "1"], "--unattributed-fraction"),
    ],
)
def test_cli_bad_delay_argument_exits_2_naming_it(tmp_path, capsys, argv, flag):
    args = _parse("--events", "1000", "--out", str(tmp_path / "x.jsonl"), *argv)
    assert cmd.run(args) == 2
    assert f"argument {flag}:" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
