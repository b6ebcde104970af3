"""Bandit gauges through the Prometheus exposition: arms, reward rate and the running SNIPS value,
checked against values computed independently from the stream; and the top-1 distributions
behind them (``BanditPolicy.distribution``)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.learners.bandits import BetaThompson, DiagLinUCB, EpsilonGreedy, LinearThompson, LinUCB
from pipeline.learners.bandits.monitor import GAUGE_SAMPLE
from pipeline.learners.base import StateBundle
from pipeline.metrics import StreamMetrics
from pipeline.runner import RawBatch, Runner
from pipeline.simulate import Simulator

BATCH = 100  # <= GAUGE_SAMPLE: every event of a batch is evaluated
WINDOW = 500


def _stream(n: int = 1500, seed: int = 2) -> list[pa.RecordBatch]:
    sim = Simulator(seed=seed, n_users=200, n_items=12, n_candidates=6, log_candidates=False)
    return list(sim.batches(n, chunk_size=BATCH))


def _run(policy, batches: list[pa.RecordBatch]) -> Runner:
    runner = Runner([policy], window=200, report_every=10_000)
    for i, b in enumerate(batches):
        runner.process(RawBatch(arrow=b, positions={"sim": (i + 1) * BATCH}))
    return runner


def _exposed(runner: Runner) -> dict[tuple[str, tuple], float]:
    metrics = StreamMetrics()
    metrics.update_models(runner)
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_update_models_exports_gauges_equal_to_an_independent_computation():
    assert BATCH <= GAUGE_SAMPLE
    batches = _stream()
    runner = _run(EpsilonGreedy(dim=4, epsilon=1.0, gauge_window=WINDOW, name="eg"), batches)
    got = _exposed(runner)

    table = pa.Table.from_batches(batches)
    items = np.array(table.column("item_id").to_pylist())
    labels = table.column("label").to_numpy()
    pscore = table.column("propensity").to_numpy()
    # a uniformly random policy over the arms known when it learns a batch (the runner's predict
    # has added the batch's items by then): pi = 1 / (distinct items up to the end of the batch)
    batch_end = (np.arange(len(items)) // BATCH + 1) * BATCH
    first_seen = {}
    for i, item in enumerate(items):
        first_seen.setdefault(item, i)
    known = np.array([sum(1 for f in first_seen.values() if f < end) for end in batch_end])
    w = (1.0 / known / pscore)[-WINDOW:]
    snips = float((w * labels[-WINDOW:]).sum() / w.sum())

    assert got[("streamlearn_bandit_arms", (("policy", "eg"),))] == len(first_seen)
    rate = got[("streamlearn_bandit_reward_rate", (("policy", "eg"), ("window", str(WINDOW))))]
    assert rate == pytest.approx(labels[-WINDOW:].mean(), abs=1e-12)
    value = got[("streamlearn_policy_value_estimate", (("estimator", "SNIPS"), ("policy", "eg")))]
    assert value == pytest.approx(snips, abs=1e-9)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinUCB(dim=8, alpha=0.5, name="p"),
        lambda: DiagLinUCB(dim=8, alpha=0.5, name="p"),
        lambda: LinearThompson(dim=8, v=0.3, n_mc=20, name="p"),
        lambda: BetaThompson(n_mc=20, name="p"),
    ],
    ids=["linucb", "diag_linucb", "linear_ts", "beta_ts"],
)
def test_gauges_survive_a_state_round_trip_through_parquet(make, tmp_path):
    batches = _stream(800)
    policy = _run(make(), batches).learners[0]
    gauges = policy.gauges()
    names = [g[0] for g in gauges]
    assert names == [
        "streamlearn_bandit_arms",
        "streamlearn_bandit_drift_resets_total",
        "streamlearn_bandit_reward_rate",
        "streamlearn_policy_value_estimate",
    ]
    assert 0.0 <= gauges[3][2] <= 1.0
    bundle = policy.state()
    assert {"recent_rewards", "recent_rounds"} <= set(bundle.tables)
    tables = {}
    for name, table in bundle.tables.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        tables[name] = pq.read_table(tmp_path / f"{name}.parquet")
    restored = make()
    restored.load_state(
        StateBundle(tables=tables, arrays=dict(bundle.arrays), meta=json.loads(json.dumps(bundle.meta)))
    )
    assert restored.gauges() == gauges


def test_gauge_estimate_leaves_learning_and_decisions_unchanged():
    batches = _stream(600)
    with_gauges = _run(LinearThompson(dim=8, v=0.3, n_mc=20, seed=3, gauge_window=300), batches)
    without = _run(LinearThompson(dim=8, v=0.3, n_mc=20, seed=3, gauge_window=0), batches)
    a, b = with_gauges.learners[0], without.learners[0]
    assert a.state().tables["arms"].equals(b.state().tables["arms"])
    assert a.state().meta["rng"] == b.state().meta["rng"]
    X = np.random.default_rng(0).normal(size=(5, 8))
    np.testing.assert_array_equal(a.select(X, a.arm_ids)[0], b.select(X, b.arm_ids)[0])
    assert [g[0] for g in b.gauges()] == ["streamlearn_bandit_arms", "streamlearn_bandit_drift_resets_total"]


def test_gauge_window_counts_only_the_last_events_when_batches_are_sampled():
    sim = Simulator(seed=1, n_users=100, n_items=8, n_candidates=4)
    runner = Runner([DiagLinUCB(dim=4, gauge_window=1500, name="d")], window=200)
    for i, b in enumerate(sim.batches(3000, chunk_size=1000)):
        runner.process(RawBatch(arrow=b, positions={"sim": i}))
    monitor = runner.learners[0]._monitor
    tables = monitor.tables()
    events = tables["recent_rounds"].column("event").to_numpy()
    assert monitor.learned == 3000 and tables["recent_rewards"].num_rows == 1500
    assert events.min() >= 1500 and (np.diff(events) > 0).all()
    assert (events >= 2000).sum() == GAUGE_SAMPLE  # the whole sample of the last batch
    assert 0 < (events < 2000).sum() < GAUGE_SAMPLE  # the part of the previous sample inside the window


# -------------------------------------------------------------------- distributions


def _trained(policy, n: int = 300, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    arms = rng.choice(np.array(["a", "b", "c", "d"]), size=n)
    policy.update(X if policy.uses_context else None, arms, (rng.random(n) < 0.3 + 0.1 * (arms == "b")) * 1.0)
    return policy


CANDS = np.array(["a", "b", "c", "d"])


@pytest.mark.parametrize(
    "make", [lambda: LinUCB(dim=4, alpha=0.7), lambda: DiagLinUCB(dim=4, alpha=0.7)], ids=["linucb", "diag"]
)
def test_distribution_of_a_deterministic_policy_is_one_hot_on_its_choice(make):
    policy = _trained(make())
    X = np.random.default_rng(5).normal(size=(50, 4))
    probs, means = policy.distribution(X, CANDS)
    chosen = policy.select(X, CANDS)[0][:, 0]
    np.testing.assert_array_equal(probs, np.eye(4)[chosen])
    np.testing.assert_allclose(means, np.stack([policy.predict_arrays(X, [c] * 50) for c in CANDS], axis=1))


def test_distribution_of_epsilon_greedy_is_exact_and_matches_select_propensities():
    policy = _trained(EpsilonGreedy(dim=4, epsilon=0.3, seed=2))
    X = np.random.default_rng(6).normal(size=(40, 4))
    probs, means = policy.distribution(X, CANDS)
    greedy = means.argmax(axis=1)
    np.testing.assert_allclose(probs, 0.7 * np.eye(4)[greedy] + 0.3 / 4)
    chosen, props = policy.select(X, CANDS)
    np.testing.assert_allclose(props[:, 0], probs[np.arange(40), chosen[:, 0]])


@pytest.mark.parametrize(
    "make",
    [lambda: LinearThompson(dim=4, v=0.5, seed=4), lambda: BetaThompson(seed=4)],
    ids=["linear_ts", "beta_ts"],
)
def test_distribution_of_thompson_sampling_matches_its_choice_frequencies(make):
    policy = _trained(make())
    X = np.tile(np.random.default_rng(7).normal(size=(1, 4)), (4000, 1))
    probs, _ = policy.distribution(X[:1], CANDS, n_mc=4000)
    freq = np.bincount(policy.select(X, CANDS)[0][:, 0], minlength=4) / 4000
    np.testing.assert_allclose(probs[0], freq, atol=0.035)  # two independent 4000-draw estimates
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_distribution_does_not_touch_the_policys_decision_generator():
    a, b = _trained(LinearThompson(dim=4, v=0.5, seed=9)), _trained(LinearThompson(dim=4, v=0.5, seed=9))
    X = np.random.default_rng(8).normal(size=(20, 4))
    a.distribution(X, CANDS)
    np.testing.assert_array_equal(a.select(X, CANDS)[0], b.select(X, CANDS)[0])
