"""Neural-linear policies: a ridge correction on a frozen ranker's last layer, starting at the ranker."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline.errors import ConfigError, SnapshotError
from pipeline.events import EventRules, decode_arrow
from pipeline.features import Featurizer
from pipeline.learners.bandits import POLICIES, NeuralLinUCB, NeuralThompson
from pipeline.learners.base import StateBundle
from pipeline.learners.neural import NeuralRanker, pretrain
from pipeline.learners.registry import build_learner
from pipeline.serving.requests import parse_request
from pipeline.serving.view import ModelVersion, ModelView
from pipeline.simulate import Simulator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = dict(dim=4, user_rows=128, item_rows=64, feature_rows=64, hidden=(8,), cross_rank=2)


@pytest.fixture(scope="module")
def featurizer() -> Featurizer:
    return Featurizer()


@pytest.fixture(scope="module")
def stream(featurizer) -> list:
    sim = Simulator(seed=1, n_users=60, n_items=20)
    return [
        featurizer.transform_and_update(decode_arrow(b, EventRules())[0])
        for b in sim.batches(3000, chunk_size=250)
    ]


def _checkpoint(stream, seed: int, path) -> str:
    ranker = NeuralRanker(**SPEC, seed=seed)
    pretrain(ranker, stream[:6], epochs=2, batch_size=256, val_fraction=0.0)
    ranker.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, stream) -> str:
    return _checkpoint(stream, 3, tmp_path_factory.mktemp("nl") / "ranker.ckpt")


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory, stream) -> str:
    return _checkpoint(stream, 4, tmp_path_factory.mktemp("nl2") / "ranker.ckpt")


def _ranker(ckpt: str) -> NeuralRanker:
    return NeuralRanker(checkpoint=ckpt)


def test_pair_features_are_the_terms_of_the_rankers_logit_and_its_probability(ckpt, stream):
    policy, ranker = NeuralLinUCB(checkpoint=ckpt), _ranker(ckpt)
    fb = stream[7]
    a = policy.pair_features(fb)
    assert a.shape == (len(fb), ranker.spec.representation_width + 1)
    bias = float(ranker._model.head.bias.detach()[0])
    np.testing.assert_allclose(a[:, :-1].sum(axis=1) + bias, ranker.logits(fb), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[:, -1], ranker.predict(fb), rtol=1e-6)


@pytest.mark.parametrize("cls", [NeuralLinUCB, NeuralThompson])
def test_before_any_feedback_the_policy_is_the_ranker(cls, ckpt, stream):
    policy, ranker = cls(checkpoint=ckpt, seed=1), _ranker(ckpt)
    fb = stream[7]
    np.testing.assert_allclose(policy.predict(fb), ranker.predict(fb), rtol=1e-6)
    # greedy (alpha = 0) decisions over the candidates' own pair features are the ranker's argmax
    greedy = NeuralLinUCB(checkpoint=ckpt, alpha=0.0)
    a = greedy.pair_features(fb)[:40].reshape(4, 10, -1)
    ids = np.array(fb.events.column("item_id").to_pylist()[:40], dtype=object).reshape(4, 10)
    chosen, _ = greedy.select(None, ids, action_features=a)
    p = ranker.predict(fb)[:40].reshape(4, 10)
    # the ranker's best (a repeated (user, item) pair ties with itself, and ties go at random)
    np.testing.assert_array_equal(p[np.arange(4), chosen[:, 0]], p.max(axis=1))


def test_the_correction_is_the_ridge_regression_of_the_rankers_residuals(ckpt, stream):
    """By hand: ``β = (λI + Σ w zzᵀ)⁻¹ Σ w z (r - p)`` with ``z = [1, a]``; estimate ``p + zᵀβ``."""
    lam, alpha = 0.7, 0.4
    policy = NeuralLinUCB(checkpoint=ckpt, lam=lam, alpha=alpha, reset_on_drift=False)
    Z, y, W = [], [], []
    rng = np.random.default_rng(0)
    for fb in stream[6:9]:
        a = policy.pair_features(fb)
        w = rng.uniform(0.5, 2.0, len(fb))
        ids = fb.events.column("item_id").to_pylist()
        policy.update(None, ids, fb.labels, w, action_features=a)
        Z.append(np.column_stack([np.ones(len(fb)), a]))
        y.append(fb.labels - a[:, -1])
        W.append(w)
    Z, y, W = np.concatenate(Z), np.concatenate(y), np.concatenate(W)
    M = lam * np.eye(Z.shape[1]) + (Z * W[:, None]).T @ Z
    beta = np.linalg.solve(M, Z.T @ (W * y))
    probe = stream[10]
    a = policy.pair_features(probe)
    z = np.column_stack([np.ones(len(probe)), a])
    want = a[:, -1] + z @ beta
    ids = probe.events.column("item_id").to_pylist()
    np.testing.assert_allclose(policy.predict_arrays(None, ids, action_features=a), want, atol=1e-9)
    np.testing.assert_allclose(policy.predict(probe), np.clip(want, 0, 1), atol=1e-9)
    # a decision is the argmax of the upper bound p + zᵀβ + α sqrt(zᵀM⁻¹z)
    a3, z3 = a[:30].reshape(3, 10, -1), z[:30].reshape(3, 10, -1)
    bound = want[:30].reshape(3, 10) + alpha * np.sqrt(np.einsum("nmk,kl,nml->nm", z3, np.linalg.inv(M), z3))
    chosen, _ = policy.select(None, np.array(ids[:30], dtype=object).reshape(3, 10), action_features=a3)
    np.testing.assert_array_equal(chosen[:, 0], bound.argmax(axis=1))


def test_learn_on_events_equals_update_on_their_pair_features(ckpt, stream):
    by_batch, by_array = NeuralThompson(checkpoint=ckpt, seed=2), NeuralThompson(checkpoint=ckpt, seed=2)
    for fb in stream[6:8]:
        by_batch.learn(fb)
        ids = fb.events.column("item_id").to_pylist()
        by_array.update(None, ids, fb.labels, action_features=by_array.pair_features(fb))
    np.testing.assert_allclose(by_batch.predict(stream[9]), by_array.predict(stream[9]), atol=1e-12)


def test_feedback_moves_the_decision_away_from_a_wrong_ranker(ckpt, stream):
    """Every shown item but the ranker's favourite pays: the policy learns to leave the favourite."""
    policy, fb = NeuralLinUCB(checkpoint=ckpt, alpha=0.0), stream[7]
    a = policy.pair_features(fb)
    pairs = np.sort(np.unique(a[:, -1], return_index=True)[1])[:10]  # no (user, item) pair twice
    a = a[pairs]
    ids = np.array(fb.events.column("item_id").to_pylist(), dtype=object)[pairs]
    favourite = int(a[:, -1].argmax())
    first = policy.select(None, ids[None], action_features=a[None])[0][0, 0]
    assert first == favourite
    reward = np.where(np.arange(10) == favourite, 0.0, 1.0)
    for _ in range(20):
        policy.update(None, ids, reward, action_features=a)
    after = policy.select(None, ids[None], action_features=a[None])[0][0, 0]
    assert after != favourite


def test_a_bandit_decision_served_scores_each_candidate_with_its_own_pair(ckpt, stream, featurizer):
    policy = build_learner("neural_linucb", "nl", {"checkpoint": ckpt, "alpha": 0.0})
    policy.learn(stream[6])
    view = ModelView(featurizer, {"nl": policy}, ModelVersion("h", 0, None, 0, "live"))
    req = parse_request(
        {"model": "nl", "user_id": "u3", "candidates": [f"i{i}" for i in range(8)], "k": 2}, decide=True
    )
    decision = view.decide(req)
    assert decision.policy == "neural_linucb" and len(decision.items) == 2
    from pipeline.serving.request_events import request_events

    batch = featurizer.transform(request_events(req, req.item_ids, req.item_features))
    mean = policy.predict_arrays(None, req.item_ids, action_features=policy.pair_features(batch))
    assert decision.items[0] == req.item_ids[int(mean.argmax())]
    assert decision.scores[0] == pytest.approx(float(mean.max()))


def test_state_round_trip_and_a_foreign_checkpoint_is_refused(ckpt, other_ckpt, stream):
    policy = NeuralLinUCB(checkpoint=ckpt, per_arm=True, seed=5)
    for fb in stream[6:9]:
        policy.learn(fb)
    bundle = policy.state()
    bundle = StateBundle(tables=bundle.tables, arrays=bundle.arrays, meta=json.loads(json.dumps(bundle.meta)))
    assert bundle.meta["embedding"]["checkpoint"] == ckpt and len(bundle.meta["embedding"]["sha256"]) == 64
    restored = NeuralLinUCB(checkpoint=ckpt, per_arm=True, seed=5)
    restored.load_state(bundle)
    np.testing.assert_array_equal(restored.predict(stream[10]), policy.predict(stream[10]))
    with pytest.raises(SnapshotError, match="is a different file"):
        NeuralLinUCB(checkpoint=other_ckpt, per_arm=True).load_state(bundle)


def test_configuration_errors_name_the_parameter(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint is required"):
        build_learner("neural_ts")
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(
        ConfigError, match=re.escape(f"checkpoint could not be loaded: checkpoint file not found: {missing}")
    ):
        build_learner("neural_linucb", params={"checkpoint": str(missing)})
    with pytest.raises(ConfigError, match="dim"):
        build_learner("neural_linucb", params={"checkpoint": str(missing), "dim": 4})
    assert {"neural_linucb", "neural_ts"} <= set(POLICIES)
