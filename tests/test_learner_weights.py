"""Per-example weights (``FeatureBatch.weights``) in every learner family (docs/architecture.md).

Weight w multiplies an example's loss term: unit weights learn bit for bit what no weights learn,
weight 0 changes nothing, and an integer k counts an example k times where the model is a sum of
statistics. The cases are the conformance suite's (``tests/test_conformance.py``), one per
registered kind, so a kind registered without weight support fails here too.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.events import EventBatch, EventRules, decode_json
from pipeline.features import BIAS_KEY, FeatureBatch, Featurizer
from pipeline.learners.bandits import BootstrapPolicy
from pipeline.learners.base import Learner, Policy
from pipeline.learners.checks import check_weights
from pipeline.learners.error_memory import ErrorMemoryLearner
from pipeline.learners.ftrl import FTRL
from pipeline.learners.neural import NeuralRanker
from pipeline.learners.registry import known_kinds
from pipeline.learners.river_adapter import RiverLearner, event_dicts, learns_with_weights, repeats
from pipeline.runner import Runner
from tests.test_conformance import (
    BATCH,
    CONFORMANCE_LEARNERS,
    EMBEDDING_CHECKPOINT,
    Case,
    N,
    assert_bundles_equal,
    batches,
    embedding_checkpoint,  # noqa: F401 - the fixture, for the cases that need a checkpoint
    kinds_without_case,
    make_events,
    make_runner,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the first conformance case of every kind, without a pretrained checkpoint where the kind can
#: (the embedding variant adds nothing here: contexts are inputs, weights act on the statistics);
#: the neural-linear kinds cannot
WEIGHT_CASES: list[Case] = list(
    {
        c.kind: c
        for c in reversed(CONFORMANCE_LEARNERS)
        if EMBEDDING_CHECKPOINT not in c.params.values() or c.kind.startswith("neural_")
    }.values()
)[::-1]

#: kinds whose model is a sum of per-event statistics (with gamma = 1): weight 2 = the rows twice.
#: Bootstrap draws a Poisson weight per presented row, so twice the rows are other draws.
SUM_KINDS = {
    "error_memory",
    "linucb",
    "diag_linucb",
    "linear_ts",
    "beta_ts",
    "epsilon_greedy",
    "hybrid_linucb",
    "hybrid_ts",
    "neural_linucb",
    "neural_ts",
}


def _resolved(c: Case, request) -> Case:
    """``c`` with the pretrained checkpoint's path where it names one."""
    if EMBEDDING_CHECKPOINT not in c.params.values():
        return c
    path = request.getfixturevalue("embedding_checkpoint")
    return Case(c.kind, {k: path if v == EMBEDDING_CHECKPOINT else v for k, v in c.params.items()}, c.name)


@pytest.fixture(params=WEIGHT_CASES, ids=lambda c: c.id)
def case(request) -> Case:
    return _resolved(request.param, request)


def warm_runner(case: Case, seed: int = 11) -> Runner:
    """A runner of ``case`` that has learned a short stream (so that optimiser and memory are not empty)."""
    runner = make_runner(case)
    for raw in batches(make_events(N, seed=seed)):
        runner.process(raw)
    return runner


def new_events(seed: int = 12, n: int = BATCH, prefix: str = "") -> EventBatch:
    events, dead = decode_json(make_events(n, seed=seed, first=10**5, prefix=prefix), EventRules())
    assert not dead
    return events


def learn(learner: Learner, fb: FeatureBatch, weights: np.ndarray | None) -> None:
    fb = dataclasses.replace(fb, weights=weights)
    learner.learn(fb, learner.predict(fb))


def heldout_predictions(runner: Runner) -> np.ndarray:
    return runner.learners[0].predict(runner.featurizer.transform(new_events(seed=13, n=150)))


def test_feature_batch_has_no_weights_by_default():
    fb = Featurizer().transform(new_events())
    assert fb.weights is None
    np.testing.assert_array_equal(fb.sample_weights, np.ones(len(fb)), strict=True)
    w = np.linspace(0.0, 2.0, len(fb))
    assert dataclasses.replace(fb, weights=w).sample_weights is w


def test_every_registered_kind_is_checked():
    assert kinds_without_case(known_kinds(), WEIGHT_CASES) == []


def test_unit_weights_learn_what_no_weights_learn(case: Case):
    plain, unit = warm_runner(case), warm_runner(case)
    for seed in (12, 14):
        events = new_events(seed)
        learn(plain.learners[0], plain.featurizer.transform(events), None)
        learn(unit.learners[0], unit.featurizer.transform(events), np.ones(len(events)))
    assert_bundles_equal({"x": plain.learners[0].state()}, {"x": unit.learners[0].state()})


def test_zero_weights_change_nothing(case: Case):
    runner = warm_runner(case)
    learner = runner.learners[0]
    before_state, before = learner.state(), heldout_predictions(runner)
    for prefix in ("", "new-"):  # known ids, then unseen ones
        events = new_events(prefix=prefix)
        fb = runner.featurizer.transform(events)
        p = learner.predict(fb)
        learn(learner, fb, np.zeros(len(events)))
        np.testing.assert_allclose(learner.predict(fb), p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(heldout_predictions(runner), before, rtol=0, atol=1e-12)
    if not isinstance(learner, Policy):
        # a policy adds the batch's new arms (at the prior) and counts its events in pulls and the
        # gauges; every other learner's state is untouched
        assert_bundles_equal({"x": before_state}, {"x": learner.state()})


def _sum_statistics(learner: Learner) -> dict[str, np.ndarray]:
    """The learned sums: a policy's per-arm statistics (pulls count events, not weights), an error
    memory's buckets, key mean and base state."""
    if isinstance(learner, Policy):
        out = dict(learner._stat_columns())
        for name, table in learner._shared_tables().items():
            out.update({f"{name}.{c}": np.asarray(table.column(c).to_pylist()) for c in table.column_names})
        return out
    assert isinstance(learner, ErrorMemoryLearner)
    st = learner.state()
    return {k: v for k, v in st.arrays.items() if k not in ("scale",)}


@pytest.mark.parametrize("kind", sorted(SUM_KINDS))
def test_weight_two_counts_like_the_rows_twice(kind: str, request):
    (case,) = [_resolved(c, request) for c in WEIGHT_CASES if c.kind == kind]
    weighted, doubled = warm_runner(case), warm_runner(case)
    events = new_events()
    rows = np.arange(len(events))
    learn(weighted.learners[0], weighted.featurizer.transform(events), np.full(len(events), 2.0))
    learn(doubled.learners[0], doubled.featurizer.transform(events.take(np.concatenate([rows, rows]))), None)
    a, b = _sum_statistics(weighted.learners[0]), _sum_statistics(doubled.learners[0])
    assert sorted(a) == sorted(b)
    for name in a:
        # the unweighted key mean sums the float32 keys in float32
        tol = 1e-6 if name == "key_sum" else 1e-9
        np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(heldout_predictions(weighted), heldout_predictions(doubled), rtol=0, atol=1e-9)


def test_bootstrap_multiplies_its_poisson_weights_by_the_example_weights():
    policies = [BootstrapPolicy(base="linucb", bags=3, dim=4, seed=5) for _ in range(2)]
    fb = Featurizer().transform(new_events())
    w = np.linspace(0.0, 3.0, len(fb))
    learn(policies[0], fb, w)
    X = policies[1].batch_contexts(fb)
    policies[1].update(X, fb.events.strings("item_id"), fb.labels, w)  # the array API's weights
    for bag_a, bag_b in zip(policies[0]._bags, policies[1]._bags):
        for name, col in bag_a._stat_columns().items():
            np.testing.assert_allclose(col, bag_b._stat_columns()[name], rtol=1e-12, err_msg=name)


# ------------------------------------------------------------------------------------ FTRL


def test_ftrl_weighs_each_events_gradient_by_hand():
    # two events, nothing learned yet (p = 0.5): g = sum_r w_r (p_r - y_r) x_r per slot, z = g, n = g²
    raw = [
        b'{"event_id":"a","ts":1,"user_id":"u0","item_id":"i0","label":1}',
        b'{"event_id":"b","ts":2,"user_id":"u1","item_id":"i1","label":0}',
    ]
    fb = Featurizer().transform(decode_json(raw, EventRules())[0])
    model = FTRL(alpha=1.0, beta=1.0, l1=0.0, l2=0.0, bits=20)
    learn(model, fb, np.array([3.0, 0.5]))
    z, n = model.state().arrays["z"], model.state().arrays["n"]
    slots = fb.slots(20)
    bias = int(np.uint64(BIAS_KEY) & np.uint64((1 << 20) - 1))
    assert len(set(slots.tolist())) == 5  # bias shared, one user and one item slot per event
    expected = {bias: 3.0 * (0.5 - 1.0) + 0.5 * (0.5 - 0.0)}  # -1.25
    for r, g in ((0, 3.0 * -0.5), (1, 0.5 * 0.5)):
        for s in slots[fb.indptr[r] : fb.indptr[r + 1]].tolist():
            expected.setdefault(s, g)
    assert expected[bias] == -1.25
    assert sorted(np.flatnonzero(z).tolist()) == sorted(expected)
    for s, g in expected.items():
        assert z[s] == g and n[s] == g * g
    # w_i = -z / (beta + sqrt(n)) / alpha: the bias weight is 1.25 / 2.25
    assert model._w[bias] == pytest.approx(1.25 / 2.25, rel=1e-15)


# ------------------------------------------------------------------------------------ neural

SMALL = dict(dim=8, user_rows=64, item_rows=32, feature_rows=32, hidden=(16,), cross_rank=4)


def _neural_twins(**params) -> tuple[Featurizer, NeuralRanker, NeuralRanker]:
    fz = Featurizer()
    a = NeuralRanker(**SMALL, **params, seed=4)
    for raw in batches(make_events(N, seed=11)):
        fb = fz.transform_and_update(decode_json(raw.values, EventRules())[0])
        a.learn(fb, a.predict(fb))
    return fz, a, copy.deepcopy(a)


def test_neural_zero_weights_drop_their_rows():
    fz, full, half = _neural_twins(replay_size=200)
    events = new_events()
    kept = np.arange(0, len(events), 2)
    w = np.zeros(len(events))
    w[kept] = np.linspace(0.5, 2.0, len(kept))
    learn(full, fz.transform(events), w)
    learn(half, fz.transform(events.take(kept)), w[kept])
    assert_bundles_equal({"x": full.state()}, {"x": half.state()})


def test_neural_step_is_the_gradient_of_the_weighted_mean_logloss():
    fz, model, ref = _neural_twins(optimizer="sgd", lr=0.05, embedding_lr=0.2)
    events = new_events()
    fb = fz.transform(events)
    w = np.linspace(0.1, 3.0, len(fb))
    before = [t.detach().clone() for t in model._model.parameters()]
    learn(model, fb, w)
    assert any(not torch.equal(t, b) for t, b in zip(model._model.parameters(), before))

    # the same step by hand on the twin: admit the ids, then SGD on mean(w * logloss)
    ref._clock += len(fb)
    rows = ref._rows(ref._hash(fb, grow=True), admit=True)
    y = torch.from_numpy(np.clip(fb.labels, 0, 1).astype(np.float32))
    losses = F.binary_cross_entropy_with_logits(ref._model(rows), y, reduction="none")
    loss = (torch.from_numpy(w.astype(np.float32)) * losses).mean()
    ref._dense_opt.zero_grad(set_to_none=True)
    ref._sparse_opt.zero_grad(set_to_none=True)
    loss.backward()
    ref._dense_opt.step()
    ref._sparse_opt.step()
    for (name, got), want in zip(model._model.state_dict().items(), ref._model.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------ river


def test_river_passes_w_to_estimators_that_take_it():
    fb = Featurizer().transform(new_events())
    w = np.linspace(0.0, 2.0, len(fb))
    model = RiverLearner("linear_model.LogisticRegression")
    assert learns_with_weights(model._model)
    learn(model, fb, w)
    direct = RiverLearner("linear_model.LogisticRegression")._model
    for x, y, wi in zip(event_dicts(fb), (fb.labels > 0).tolist(), w.tolist()):
        if wi > 0:
            direct.learn_one(x, y, w=wi)
    got = model.predict(fb)
    np.testing.assert_array_equal(got, [direct.predict_proba_one(x).get(True, 0.0) for x in event_dicts(fb)])


def test_river_repeats_events_for_estimators_without_w():
    model = RiverLearner("naive_bayes.GaussianNB")
    assert not learns_with_weights(model._model)
    events = new_events()
    fb = Featurizer().transform(events)
    w = np.tile([0.0, 1.0, 2.0, 3.0], len(fb) // 4)
    learn(model, fb, w)
    k = repeats(fb, w)
    np.testing.assert_array_equal(k, w.astype(np.int64))  # whole weights: exactly w times
    twice = RiverLearner("naive_bayes.GaussianNB")
    fb_rep = Featurizer().transform(events.take(np.repeat(np.arange(len(fb)), k)))
    twice.learn(fb_rep, twice.predict(fb_rep))
    np.testing.assert_allclose(model.predict(fb), twice.predict(fb), rtol=1e-12)
    frac = repeats(fb, np.full(len(fb), 0.5))
    assert set(frac.tolist()) <= {0, 1} and np.array_equal(frac, repeats(fb, np.full(len(fb), 0.5)))


# ------------------------------------------------------------------------------------ invalid weights


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(3), r"weights must have shape \(100,\)"),
        (np.ones((100, 1)), r"weights must have shape \(100,\)"),
        (np.r_[np.ones(99), -1.0], "weights must be >= 0, got -1.0 at row 99"),
        (np.r_[np.nan, np.ones(99)], "weights must be finite, got nan at row 0"),
        (np.r_[np.ones(50), np.inf, np.ones(49)], "weights must be finite, got inf at row 50"),
    ],
    ids=["short", "2-d", "negative", "nan", "inf"],
)
def test_invalid_weights_are_refused_before_anything_is_learned(case: Case, weights, message):
    runner = warm_runner(case)
    learner = runner.learners[0]
    before = learner.state()
    fb = runner.featurizer.transform(new_events())
    with pytest.raises(ValueError, match=message):
        learn(learner, fb, weights)
    assert_bundles_equal({"x": before}, {"x": learner.state()})


def test_check_weights_names_non_numbers():
    with pytest.raises(ValueError, match="weights must be numbers"):
        check_weights(np.array(["a", "b"]), 2)


def test_replay_buffer_keeps_weights_and_reads_old_states_as_unit_weights():
    from pipeline.learners.neural.encode import HashedBatch
    from pipeline.learners.neural.replay import ReplayBuffer

    buf = ReplayBuffer(capacity=4, max_fields=1, max_dense=0)
    hb = HashedBatch(
        np.arange(1, 4, dtype=np.uint64),
        np.zeros(3, np.uint64),
        np.zeros((3, 1), np.uint64),
        np.zeros((3, 0), np.float32),
    )
    buf.push(hb, np.array([1.0, 0.0, 1.0]), np.array([0.5, 2.0, 1.5], np.float32))
    arrays, meta = buf.state()
    sampled, _, w = buf.sample_weighted(20, np.random.default_rng(0))
    np.testing.assert_array_equal(w, np.array([0.5, 2.0, 1.5], np.float32)[sampled.user.astype(int) - 1])
    old = ReplayBuffer(capacity=4, max_fields=1, max_dense=0)
    old.load_state({k: v for k, v in arrays.items() if k != "replay.weight"}, meta)  # a snapshot from before
    assert old.sample_weighted(5, np.random.default_rng(0))[2].tolist() == [1.0] * 5
