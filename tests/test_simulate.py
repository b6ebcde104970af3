"""Tests of the synthetic stream (pipeline.simulate) and its command (consumers.commands.simulate)."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from consumers.commands import simulate as cmd
from pipeline.errors import ConfigError
from pipeline.events import EventRules, decode_arrow, decode_json
from pipeline.simulate import (
    Contexts,
    Drift,
    Environment,
    LoggingPolicy,
    SimConfig,
    Simulator,
    default_drifts,
    examination,
    parse_drift,
    to_json_lines,
)
from pipeline.simulation.environment import sample_without_replacement
from pipeline.simulation.stream import BLOCK_REQUESTS

SMALL = {"n_users": 300, "n_items": 60}


def _table(sim: Simulator, n: int, **kwargs) -> pa.Table:
    return pa.Table.from_batches(list(sim.batches(n, **kwargs)))


def _ints(col: pa.ChunkedArray) -> np.ndarray:
    """'u123' -> 123 (the test's own parser of the id convention)."""
    return np.array([int(s[1:]) for s in col.to_pylist()], dtype=np.int64)


def _repeat(ctx: Contexts, n: int) -> Contexts:
    return Contexts(**{f.name: np.repeat(getattr(ctx, f.name), n, axis=0) for f in dataclasses.fields(ctx)})


def _within(observed: np.ndarray, expected: np.ndarray, n: int, z: float = 5.0) -> bool:
    return bool(np.all(np.abs(observed - expected) <= z * np.sqrt(expected * (1 - expected) / n) + 1e-12))


# --------------------------------------------------------------------------- determinism


def test_batches_same_seed_identical_other_seed_different():
    drifts = (Drift(2000, "abrupt"),)
    a = _table(Simulator(seed=5, drifts=drifts, **SMALL), 5000)
    b = _table(Simulator(seed=5, drifts=drifts, **SMALL), 5000)
    c = _table(Simulator(seed=6, drifts=drifts, **SMALL), 5000)
    assert a.equals(b)
    assert a.column("user_id") != c.column("user_id")
    assert a.num_rows == 5000


def test_batches_any_chunk_size_same_rows_and_prefix_of_longer_stream():
    sim = Simulator(seed=2, **SMALL)
    whole = _table(sim, 20_000, chunk_size=20_000)
    chunks = list(sim.batches(20_000, chunk_size=3_333))
    assert [c.num_rows for c in chunks[:-1]] == [3_333] * (len(chunks) - 1)
    assert pa.Table.from_batches(chunks).equals(whole)
    assert _table(sim, 9_000).equals(whole.slice(0, 9_000))


def test_invalid_injection_leaves_valid_events_unchanged():
    sim = Simulator(seed=4, **SMALL)
    clean = _table(sim, 12_000)
    dirty = _table(sim, 12_000, invalid_fraction=0.05)
    ids = dirty.column("event_id").to_pylist()
    keep = [i for i, e in enumerate(ids) if e is not None and not e.startswith("bad-")]
    assert dirty.take(keep).equals(clean)
    assert 0.03 < 1 - len(keep) / dirty.num_rows < 0.07


# --------------------------------------------------------------------------- propensities


@pytest.mark.parametrize("slate_size", [1, 3])
def test_logging_policy_choice_frequencies_match_stated_propensities(slate_size):
    sim = Simulator(seed=8, slate_size=slate_size, **SMALL)
    ctx = sim.environment().contexts(1)
    n = 40_000
    policy = sim.logging_policy()
    p = policy.probabilities(ctx)[0]
    items, props = policy.select(_repeat(ctx, n), slate_size)
    cands = ctx.candidates[0]
    k = len(cands)
    for pos in range(slate_size):
        freq = (items[:, pos][:, None] == cands[None, :]).mean(axis=0)
        # independent statement of the scheme: lead ~ p, other positions uniform over the rest
        expected = p if pos == 0 else (1 - p) / (k - 1)
        assert _within(freq, expected, n), (pos, freq, expected)
        shown = np.searchsorted(cands, items[:, pos], sorter=np.argsort(cands))
        np.testing.assert_allclose(props[:, pos], expected[np.argsort(cands)][shown], rtol=1e-12)


def test_logging_policy_probabilities_equal_hand_computed_softmax_mixture():
    sim = Simulator(seed=9, temperature=0.3, epsilon=0.2, **SMALL)
    ctx = sim.environment().contexts(50)
    policy = sim.logging_policy()
    s = policy.scores(ctx)
    k = s.shape[1]
    expected = np.array(
        [[0.8 * math.exp(v / 0.3) / sum(math.exp(x / 0.3) for x in row) + 0.2 / k for v in row] for row in s]
    )
    np.testing.assert_allclose(policy.probabilities(ctx), expected, rtol=1e-10)


@pytest.mark.parametrize("slate_size", [1, 4])
def test_logged_inverse_propensity_mean_is_candidate_count(slate_size):
    # E[1/propensity] = sum over candidates of P(shown) / P(shown) = K at every position, exactly
    # when the recorded propensity is the probability of that item at that position.
    sim = Simulator(seed=10, slate_size=slate_size, **SMALL)
    t = _table(sim, 60_000)
    prop, pos = t.column("propensity").to_numpy(), t.column("position").to_numpy()
    assert prop.min() > 0 and prop.max() <= 1
    for j in range(slate_size):
        inv = 1 / prop[pos == j]
        se = inv.std() / math.sqrt(len(inv))
        assert abs(inv.mean() - sim.config.n_candidates) < 4.5 * se, (j, inv.mean(), se)


def test_slate_rows_group_by_request_with_positions_in_order():
    sim = Simulator(seed=11, slate_size=3, **SMALL)
    t = _table(sim, 3_000)
    req = t.column("request_id").to_pylist()
    assert req[:6] == ["r0", "r0", "r0", "r1", "r1", "r1"]
    assert t.column("position").to_pylist()[:6] == [0, 1, 2, 0, 1, 2]
    items = np.array(t.column("item_id").to_pylist()).reshape(-1, 3)
    assert all(len(set(r)) == 3 for r in items.tolist())


# --------------------------------------------------------------------------- drifts


def _item_ctr_auc_drop(drifts: tuple[Drift, ...]) -> float:
    sim = Simulator(seed=3, drifts=drifts, **SMALL)
    t = _table(sim, 36_000)
    item, y = _ints(t.column("item_id")), t.column("label").to_numpy()
    clicks = np.bincount(item[:24_000], y[:24_000], minlength=60)
    ctr = (clicks + 1) / (np.bincount(item[:24_000], minlength=60) + 4)
    before = roc_auc_score(y[24_000:30_000], ctr[item[24_000:30_000]])
    after = roc_auc_score(y[30_000:], ctr[item[30_000:]])
    return before - after


def test_popularity_drift_makes_item_ctr_fitted_before_worse_after():
    assert _item_ctr_auc_drop((Drift(30_000, "popularity"),)) > 0.06
    assert abs(_item_ctr_auc_drop(())) < 0.03  # control: the same statistic on a stationary stream


def _stale_oracle_regret(env: Environment, ctx: Contexts, frozen_at: int) -> np.ndarray:
    """Regret of choosing the best candidate of the world frozen at event ``frozen_at``."""
    zero = np.zeros(ctx.candidates.shape[1], np.int64)
    now = env.reward_probabilities(ctx, ctx.candidates, positions=zero)
    stale_ctx = dataclasses.replace(ctx, t=np.full(len(ctx), frozen_at))
    stale = env.reward_probabilities(stale_ctx, ctx.candidates, positions=zero)
    rows = np.arange(len(ctx))
    return now.max(axis=1) - now[rows, stale.argmax(axis=1)]


def test_abrupt_drift_changes_best_items_from_the_drift_event_on():
    sim = Simulator(seed=12, drifts=(Drift(5_000, "abrupt"),), **SMALL)
    env = sim.environment()
    ctx = env.contexts(10_000)
    regret = _stale_oracle_regret(env, ctx, frozen_at=4_999)
    assert np.all(regret[:5_000] == 0)
    assert regret[5_000:].mean() > 0.05
    assert sim.drift_points == (5_000,)


def test_gradual_drift_grows_over_its_span():
    sim = Simulator(seed=13, drifts=(Drift(2_000, "gradual", span=8_000),), **SMALL)
    env = sim.environment()
    ctx = env.contexts(12_000)
    regret = _stale_oracle_regret(env, ctx, frozen_at=1_999)
    assert np.all(regret[:2_000] == 0)
    early, late, done = regret[2_000:3_000].mean(), regret[7_000:10_000].mean(), regret[10_000:].mean()
    assert early < late and early < 0.5 * done
    assert done > 0.05


def test_new_items_appear_only_after_their_drift_and_take_traffic():
    sim = Simulator(seed=14, drifts=(Drift(6_000, "new_items", n_items=20),), **SMALL)
    item = _ints(_table(sim, 12_000).column("item_id"))
    assert item[:6_000].max() < 60
    new_share = (item[6_000:] >= 60).mean()
    assert 20 / 80 * 0.4 < new_share < 20 / 80 * 2.5
    assert len(sim.environment().active_items(t=6_000)) == 80


def test_drift_schedule_rejects_preference_drift_inside_gradual_span():
    with pytest.raises(ConfigError, match="drifts: abrupt@1500 starts before"):
        SimConfig(drifts=(Drift(1_000, "gradual", span=1_000), Drift(1_500, "abrupt")))
    SimConfig(drifts=(Drift(1_000, "gradual", span=1_000), Drift(1_500, "popularity")))


# --------------------------------------------------------------------------- schema


def test_json_chunks_decode_valid_records_and_dead_letter_every_injected_one():
    sim = Simulator(seed=15, late_fraction=0.01, **SMALL)
    chunks = list(sim.json_chunks(20_000, invalid_fraction=0.02))
    lines = [line for c in chunks for line in c.lines]
    invalid = np.concatenate([c.invalid for c in chunks])
    batch, dead = decode_json(lines, EventRules())
    assert len(batch) == 20_000 == sum(c.n_events for c in chunks)
    assert [d.index for d in dead] == np.flatnonzero(invalid).tolist()
    assert {d.reason for d in dead} >= {
        "malformed_json", "missing_field", "non_finite", "out_of_range", "unknown_event_type", "wrong_type",
    }  # fmt: skip
    arrow, arrow_dead = decode_arrow(_table(sim, 20_000).combine_chunks().to_batches()[0], EventRules())
    assert arrow_dead == []
    for name in ("event_id", "ts", "user_id", "item_id", "label", "position", "propensity", "request_id"):
        assert batch.column(name).equals(arrow.column(name)), name
    assert batch.column("num_features").equals(arrow.column("num_features"))


def test_arrow_batches_with_invalid_rows_dead_letter_exactly_those():
    sim = Simulator(seed=16, **SMALL)
    batches = list(sim.batches(15_000, invalid_fraction=0.03))
    total_dead = 0
    for b in batches:
        events, dead = decode_arrow(b, EventRules())
        ids = b.column("event_id").to_pylist()
        bad = [i for i, e in enumerate(ids) if e is None or e.startswith("bad-")]
        assert [d.index for d in dead] == bad
        total_dead += len(dead)
        assert len(events) == b.num_rows - len(dead)
    assert total_dead > 0
    assert sum(b.num_rows for b in batches) - total_dead == 15_000


def test_to_json_lines_escapes_odd_strings_and_omits_null_propensity():
    env = Environment(SimConfig(seed=23, **SMALL))
    ctx = env.contexts(3)
    batch = env.records(ctx, ctx.candidates[:, 0], labels=np.array([1.0, 0.0, 1.0]))
    odd = pa.array(['u"1\\', "u2\n", "é"])
    batch = batch.set_column(batch.schema.get_field_index("user_id"), "user_id", odd)
    lines = to_json_lines(batch)
    assert b"propensity" not in lines[0]
    events, dead = decode_json(lines, EventRules())
    assert dead == [] and events.strings("user_id") == odd.to_pylist()
    assert events.label.tolist() == [1.0, 0.0, 1.0]


def test_late_fraction_controls_out_of_order_timestamps():
    ts = _table(Simulator(seed=17, **SMALL), 20_000).column("ts").to_numpy()
    assert np.all(np.diff(ts) >= 0)
    late = _table(Simulator(seed=17, late_fraction=0.02, **SMALL), 20_000).column("ts").to_numpy()
    back = (late < np.maximum.accumulate(late)).mean()
    assert 0.01 < back < 0.03


# --------------------------------------------------------------------------- environment


def test_environment_replays_the_logged_contexts_and_click_probabilities():
    sim = Simulator(seed=18, drifts=(Drift(3_000, "abrupt"),), **SMALL)
    log = _table(sim, BLOCK_REQUESTS, include_truth=True)
    env = sim.environment()
    ctx = env.contexts(BLOCK_REQUESTS)
    assert env.clock == BLOCK_REQUESTS
    np.testing.assert_array_equal(_ints(log.column("user_id")), ctx.user)
    np.testing.assert_array_equal(log.column("ts").to_numpy(), ctx.ts)
    feats = log.column("features").combine_chunks()
    np.testing.assert_array_equal(feats.field("hour").to_numpy(), ctx.hour)
    items = _ints(log.column("item_id"))
    assert np.all((ctx.candidates == items[:, None]).any(axis=1))
    np.testing.assert_array_equal(env.reward_probabilities(ctx, items), log.column("p_click").to_numpy())
    _, best = env.best(ctx)
    np.testing.assert_array_equal(best, log.column("p_best").to_numpy())
    y = log.column("label").to_numpy()
    p = log.column("p_click").to_numpy()
    assert abs(y.mean() - p.mean()) < 4 * math.sqrt(p.mean() * (1 - p.mean()) / len(p))


def test_reward_probabilities_follow_hand_computed_formula():
    cfg = SimConfig(seed=19, label_noise=0.05, **SMALL)
    env = Environment(cfg)
    ctx = env.contexts(5)
    w = env.world
    items = ctx.candidates[:, :3]
    got = env.reward_probabilities(ctx, items)
    for r in range(5):
        u = ctx.user[r]
        for j, i in enumerate(items[r]):
            c = w.item_category[i]
            logit = (
                cfg.base_logit
                + cfg.preference_scale * float(w.epochs[0].user_from[u] @ w.item_vec[i])
                + w.epochs[0].popularity[i]
                + w.device_category[ctx.device[r], c]
                + w.hour_amp[c] * math.cos(2 * math.pi * (ctx.hour[r] - w.hour_phase[c]) / 24)
                - w.price_sensitivity[u] * math.log(w.item_price[i] / 12.0)
            )
            expected = 0.05 + 0.9 / math.log2(2 + j) / (1 + math.exp(-logit))
            assert got[r, j] == pytest.approx(expected, rel=1e-12)
    assert examination(np.array([0, 2])).tolist() == [1.0, 0.5]


def test_closed_loop_oracle_has_no_regret_and_beats_random_policy():
    env = Environment(SimConfig(seed=20, drifts=(Drift(3_000, "popularity"),), **SMALL))
    rng = np.random.default_rng(0)
    oracle_reward, random_reward = 0.0, 0.0
    for _ in range(6):
        ctx = env.contexts(1_000)
        best_items, best_p = env.best(ctx)
        np.testing.assert_array_equal(env.reward_probabilities(ctx, best_items), best_p)
        oracle_reward += env.step(ctx, best_items).sum()
        guess = ctx.candidates[np.arange(1_000), rng.integers(ctx.candidates.shape[1], size=1_000)]
        random_reward += env.step(ctx, guess).sum()
    assert env.clock == 6_000
    assert oracle_reward > 1.5 * random_reward


def test_environment_records_decode_as_events():
    env = Environment(SimConfig(seed=21, **SMALL))
    ctx = env.contexts(40)
    events, dead = decode_arrow(env.records(ctx, ctx.candidates), EventRules())
    assert dead == [] and len(events) == 40 * 10
    assert events.strings("request_id")[:2] == ["r0", "r0"]


def test_sample_without_replacement_distinct_and_uniform():
    rng = np.random.default_rng(0)
    out = sample_without_replacement(rng, np.full(30_000, 6), 3)
    assert all(len(set(r)) == 3 for r in out[:2000].tolist())
    freq = np.bincount(out.ravel(), minlength=6) / out.size
    assert _within(freq, np.full(6, 1 / 6), out.size)
    # every ordered position is uniform too
    assert _within(np.bincount(out[:, 2], minlength=6) / 30_000, np.full(6, 1 / 6), 30_000)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("abrupt@50000", Drift(50_000, "abrupt")),
        ("gradual@10,span=5,strength=0.5", Drift(10, "gradual", span=5, strength=0.5)),
        ("new_items@7,n=3", Drift(7, "new_items", n_items=3)),
        ("popularity@0", Drift(0, "popularity")),
    ],
)
def test_parse_drift_round_trips_with_spec(spec, expected):
    assert parse_drift(spec) == expected
    assert parse_drift(expected.spec()) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_users": 0}, "n_users must be >= 1"),
        ({"n_candidates": 500}, "n_candidates must be <= n_items"),
        ({"slate_size": 11}, "slate_size must be <= n_candidates"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"label_noise": 0.5}, "label_noise must be in"),
        ({"epsilon": 1.5}, "epsilon must be in"),
    ],
)
def test_sim_config_invalid_value_names_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SimConfig(**kwargs)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("abrupt", "kind@event"), ("sideways@3", "drift kind must be one of"), ("gradual@3", "span must be > 0"),
     ("abrupt@x", "must be numbers"), ("abrupt@3,foo=1", "unknown key 'foo'")],
)  # fmt: skip
def test_parse_drift_bad_spec_raises_with_reason(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_drift(spec)


def test_default_drifts_cover_all_kinds_inside_the_stream():
    drifts = default_drifts(200_000)
    assert sorted(d.kind for d in drifts) == ["abrupt", "gradual", "new_items", "popularity"]
    assert all(0 < d.end_event < 200_000 for d in drifts)


def test_logging_policy_unknown_items_score_as_average():
    sim = Simulator(seed=22, drifts=(Drift(0, "new_items", n_items=5),), **SMALL)
    policy = LoggingPolicy(sim.world)
    assert np.all(policy._item_vec[60:] == 0)


# --------------------------------------------------------------------------- command line


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlearn")
    cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["simulate", *argv])


def test_cli_writes_parquet_that_decodes_with_invalid_rows_dead_lettered(tmp_path, capsys):
    out = tmp_path / "s.parquet"
    args = _parse(
        "--events", "3000", "--users", "100", "--items", "40", "--invalid-fraction", "0.02", "--out", str(out)
    )
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "3,000 events" in err and "abrupt@600" in err
    events, dead = decode_arrow(pq.read_table(out).combine_chunks().to_batches()[0], EventRules())
    assert len(events) == 3000 and len(dead) > 0
    assert not (tmp_path / "s.parquet.tmp").exists()


def test_cli_gzip_output_is_reproducible_with_a_run_id_and_decodes(tmp_path):
    paths = [tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"]
    for p in paths:
        args = _parse(*"--events 2000 --seed 3 --items 40 --drift none --run-id r7 --out".split(), str(p))
        assert cmd.run(args) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    events, dead = decode_json(gzip.decompress(paths[0].read_bytes()).splitlines(), EventRules())
    assert len(events) == 2000 and dead == []
    assert events.column("event_id")[0].as_py() == "r7-e0"
    assert events.column("request_id")[0].as_py().startswith("r7-r")


def test_two_cli_runs_draw_distinct_ids_so_one_topic_holds_no_duplicates(tmp_path):
    from pipeline.dedup import Deduplicator

    ids = []
    for name in ("a.jsonl", "b.jsonl"):
        args = _parse(*"--events 500 --seed 3 --items 40 --drift none --out".split(), str(tmp_path / name))
        assert cmd.run(args) == 0
        events, _ = decode_json((tmp_path / name).read_bytes().splitlines(), EventRules())
        ids.append(events.column("event_id"))
    dedup = Deduplicator()
    assert dedup.filter(ids[0]).all() and dedup.filter(ids[1]).all()  # same seed, no repeat


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--drift", "abrupt@x"], "--drift"),
        (["--drift", "abrupt@999999"], "--drift"),
        (["--events", "0"], "--events"),
        (["--invalid-fraction", "1.0"], "--invalid-fraction"),
        (["--slate-size", "50"], "--slate-size"),
    ],
)
def test_cli_bad_argument_exits_2_naming_it(tmp_path, capsys, argv, flag):
    args = _parse("--events", "1000", "--out", str(tmp_path / "x.jsonl"), *argv)
    assert cmd.run(args) == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_unknown_output_suffix_exits_2(tmp_path, capsys):
    assert cmd.run(_parse("--events", "100", "--out", str(tmp_path / "x.csv"))) == 2
    assert "argument --out" in capsys.readouterr().err
