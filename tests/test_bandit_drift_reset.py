"""A policy's own drift watch (``reset_on_drift``): restarts on an abrupt change, and only then."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.learners.bandits import BetaThompson, LinUCB
from pipeline.learners.base import StateBundle


def _two_arm_stream(policy, rounds: int, swap_at: int | None, seed: int = 0) -> np.ndarray:
    """Rewards a policy earns from two Bernoulli arms (0.8 / 0.2) in batches of 10."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.8, 0.2])
    earned = []
    for t in range(rounds):
        if t == swap_at:
            rates = rates[::-1]
        a = policy.select(np.ones((10, 1)), np.arange(2))[0][:, 0]
        r = (rng.random(10) < rates[a]).astype(float)
        policy.update(np.ones((10, 1)), a, r)
        earned.append(r)
    return np.concatenate(earned)


def _resets(policy) -> float:
    return dict((g[0], g[2]) for g in policy.gauges())["streamlearn_bandit_drift_resets_total"]


@pytest.mark.parametrize(
    "make",
    [
        lambda on: LinUCB(dim=1, alpha=0.3, reset_on_drift=on),
        lambda on: BetaThompson(n_mc=0, seed=0, reset_on_drift=on),
    ],
    ids=["linucb", "beta_ts"],
)
def test_an_abrupt_change_restarts_the_policy_and_it_recovers(make):
    watching, blind = make(True), make(False)
    after_watching = _two_arm_stream(watching, 400, swap_at=200)[2000:]
    after_blind = _two_arm_stream(blind, 400, swap_at=200)[2000:]
    assert _resets(watching) >= 1
    assert "streamlearn_bandit_drift_resets_total" not in [g[0] for g in blind.gauges()]
    # without forgetting, 2,000 events of the old best arm hold the undiscounted policy back
    assert after_watching.mean() > 0.7
    assert after_watching.mean() > after_blind.mean() + 0.1


def test_a_stationary_stream_raises_no_alarm():
    policy = LinUCB(dim=1, alpha=0.3)
    _two_arm_stream(policy, 2000, swap_at=None, seed=3)
    assert _resets(policy) == 0


def test_a_reset_keeps_the_arms_and_forgets_their_statistics():
    policy = LinUCB(dim=1, alpha=0.3)
    _two_arm_stream(policy, 400, swap_at=200)
    assert _resets(policy) >= 1
    assert policy.n_arms == 2


def test_the_watch_survives_a_state_round_trip_through_parquet(tmp_path):
    policy = LinUCB(dim=1, alpha=0.3)
    _two_arm_stream(policy, 250, swap_at=200)
    bundle = policy.state()
    tables = {}
    for name, table in bundle.tables.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        tables[name] = pq.read_table(tmp_path / f"{name}.parquet")
    restored = LinUCB(dim=1, alpha=0.3)
    meta = json.loads(json.dumps(bundle.meta))
    restored.load_state(StateBundle(tables=tables, arrays=dict(bundle.arrays), meta=meta))
    assert restored.gauges() == policy.gauges()
    # the same stream goes on the same way: the same resets at the same events
    a = _two_arm_stream(policy, 200, swap_at=50, seed=9)
    b = _two_arm_stream(restored, 200, swap_at=50, seed=9)
    np.testing.assert_array_equal(a, b)
    assert _resets(restored) == _resets(policy)
