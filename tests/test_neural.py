"""The neural learner: learning, state, determinism, warm start, checkpoints, rank penalty, replay,
off-policy evaluation glue, offline pretraining and the ``pretrain`` command."""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from consumers.commands import pretrain as pretrain_cmd
from pipeline.errors import ConfigError
from pipeline.evaluation import logloss
from pipeline.events import EventRules, decode_arrow, decode_json
from pipeline.features import Featurizer
from pipeline.learners.neural import CheckpointError, NeuralRanker, load_checkpoint, pretrain
from pipeline.learners.neural.encode import HashedBatch
from pipeline.learners.neural.policy_eval import PolicyValueWindow, logged_rounds, ranking_policy
from pipeline.learners.neural.replay import ReplayBuffer
from pipeline.learners.registry import build_learner
from pipeline.ope import IPS, SNIPS, DoublyRobust, LoggedBandit
from pipeline.simulate import Drift, Simulator
from state.snapshot import SnapshotStore

SMALL = dict(dim=8, user_rows=128, item_rows=64, feature_rows=64, hidden=(16,), cross_rank=4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def features(n: int, seed: int = 0, chunk: int = 250, **sim) -> list:
    fz = Featurizer()
    sim = {"n_users": 80, "n_items": 30, **sim}
    return [
        fz.transform_and_update(decode_arrow(b, EventRules())[0])
        for b in Simulator(seed=seed, **sim).batches(n, chunk_size=chunk)
    ]


@pytest.fixture(scope="module")
def stream() -> list:
    return features(3000)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, stream):
    learner = NeuralRanker(**SMALL, seed=3)
    pretrain(learner, stream[:8], epochs=2, batch_size=256, val_fraction=0.2)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    learner.save_checkpoint(path, {"note": "test"})
    return path, learner


def run(learner: NeuralRanker, batches: list) -> None:
    for fb in batches:
        learner.learn(fb, learner.predict(fb))


# ------------------------------------------------------------------------------ learning


def test_predict_on_fresh_learner_returns_probabilities():
    fb = features(300)[0]
    p = NeuralRanker(**SMALL).predict(fb)
    assert p.shape == (len(fb),) and p.dtype == np.float64
    assert np.all((p > 0) & (p < 1))


def test_learn_on_stream_reduces_prequential_logloss(stream):
    learner = NeuralRanker(**SMALL, seed=1)
    losses = []
    for fb in stream:
        p = learner.predict(fb)
        losses.append(logloss(fb.labels, p))
        learner.learn(fb, p)
    assert np.mean(losses[-3:]) < np.mean(losses[:2]) - 0.02


@pytest.mark.parametrize("vocab", ["collision_free", "double_hash"])
def test_learn_repeatedly_on_one_batch_fits_it(vocab, stream):
    learner = NeuralRanker(**SMALL, vocab=vocab)
    fb = stream[0]
    before = logloss(fb.labels, learner.predict(fb))
    for _ in range(40):
        learner.learn(fb, learner.predict(fb))
    assert logloss(fb.labels, learner.predict(fb)) < before - 0.1


def test_representation_is_last_hidden_layer_without_side_effects(stream):
    learner = NeuralRanker(**SMALL)
    run(learner, stream[:2])
    fb = stream[2]
    before = learner.predict(fb)
    rep = learner.representation(fb)
    assert rep.shape == (len(fb), learner.spec.representation_width)
    head = learner._model.head
    with torch.no_grad():
        logits = head(torch.from_numpy(rep)).squeeze(1).double().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), before, rtol=1e-6)
    np.testing.assert_array_equal(learner.predict(fb), before)


def test_learner_has_about_a_million_parameters_by_default():
    learner = NeuralRanker()
    assert 0.9e6 <= learner.n_parameters() <= 1.1e6
    assert learner.n_parameters() == learner.spec.n_parameters()


# ------------------------------------------------------------------------------ state and determinism


def test_snapshot_round_trip_predicts_and_continues_identically(tmp_path, stream):
    params = dict(SMALL, replay_size=500, replay_ratio=0.5, max_age=800, user_rows=40)
    a = NeuralRanker(**params)
    run(a, stream[:6])
    store = SnapshotStore(tmp_path)
    store.prepare()
    manifest = store.write({"n": a.state()}, positions={}, events_applied=0, config_hash="t")
    b = NeuralRanker(**params)
    b.load_state(store.read(manifest["seq"])[1]["n"])
    np.testing.assert_array_equal(a.predict(stream[6]), b.predict(stream[6]), strict=True)
    run(a, stream[6:9])
    run(b, stream[6:9])
    np.testing.assert_array_equal(a.predict(stream[9]), b.predict(stream[9]), strict=True)
    assert a.gauges() == b.gauges()


def test_same_seed_gives_same_predictions_and_other_seed_differs(stream):
    runs = {}
    for key, seed in (("a", 5), ("b", 5), ("c", 6)):
        learner = NeuralRanker(**SMALL, replay_size=300, seed=seed)
        run(learner, stream[:4])
        runs[key] = learner.predict(stream[4])
    np.testing.assert_array_equal(runs["a"], runs["b"], strict=True)
    assert not np.array_equal(runs["a"], runs["c"])


def test_load_state_with_other_architecture_raises(stream):
    a = NeuralRanker(**SMALL)
    with pytest.raises(ValueError, match="architecture"):
        NeuralRanker(**dict(SMALL, dim=4)).load_state(a.state())


def test_unseen_ids_share_a_row_until_admitted(stream):
    learner = NeuralRanker(**SMALL)
    run(learner, stream[:3])
    lines = [
        b'{"event_id":"n%d","ts":1,"user_id":"new-u%d","item_id":"new-i","label":%d,"features":{"device":"ios"}}'
        % (i, i, i % 2)
        for i in range(4)
    ]
    fb = Featurizer().transform(decode_json(lines, EventRules())[0])
    p = learner.predict(fb)
    assert np.all(np.isfinite(p)) and np.ptp(p) == 0  # every new user and the new item: the shared rows
    learner.learn(fb, p)
    assert np.ptp(learner.predict(fb)) > 0  # admitted: each user has its own row now


def test_eviction_frees_and_reuses_rows_and_shows_in_gauges(stream):
    learner = NeuralRanker(**dict(SMALL, user_rows=16), max_age=300, name="nn")
    run(learner, stream[:6])
    gauges = {(m, tuple(sorted(lbl.items()))): v for m, lbl, v in learner.gauges()}
    rows = gauges[("streamlearn_embedding_rows", (("table", "nn.user"),))]
    evicted = gauges[("streamlearn_embedding_evictions_total", (("table", "nn.user"),))]
    assert 0 < rows <= 15
    assert evicted > 0
    assert learner._vocabs["user"].admissions == rows + evicted


# ------------------------------------------------------------------------------ warm start and checkpoints


def test_warm_start_predicts_exactly_like_checkpoint_before_first_update(checkpoint, stream):
    path, trained = checkpoint
    warm = NeuralRanker(checkpoint=str(path))
    for fb in stream[8:10]:
        np.testing.assert_array_equal(warm.predict(fb), trained.predict(fb), strict=True)
    assert warm.spec == trained.spec
    warm.learn(stream[8], warm.predict(stream[8]))
    assert not np.array_equal(warm.predict(stream[9]), trained.predict(stream[9]))


def test_warm_start_with_contradicting_architecture_names_parameter(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ValueError, match=r"dim=16 contradicts the checkpoint .*model\.ckpt \(dim=8\)"):
        NeuralRanker(checkpoint=str(path), dim=16)


def test_checkpoint_keeps_vocabularies_and_training_info(checkpoint):
    path, trained = checkpoint
    ckpt = load_checkpoint(path)
    assert ckpt.info["note"] == "test"
    assert ckpt.slots == {"cat": ["device", "category"], "dense": ["hour", "price"]}
    np.testing.assert_array_equal(
        ckpt.vocabs["user"].arrays["key"], trained._vocabs["user"].state().arrays["key"]
    )
    assert ckpt.vocabs["user"].arrays["key"].dtype == np.uint64


def _torch_file(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Payload:
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "checkpoint file not found"),
        (b"", "is not a readable checkpoint file"),
        (b"garbage\x00\x01", "is not a readable checkpoint file"),
        ("truncated", "is not a readable checkpoint file"),
        (_torch_file({"weights": torch.zeros(2)}), "is not a streamlearn neural checkpoint"),
        (
            _torch_file({"format": "streamlearn.neural.checkpoint", "version": 99}),
            "has checkpoint version 99",
        ),
        (_torch_file({"format": "streamlearn.neural.checkpoint", "version": 1, "meta": "{"}), "damaged"),
        (_torch_file(_Payload()), "is not a readable checkpoint file"),  # weights_only refuses objects
    ],
    ids=["missing", "empty", "garbage", "truncated", "foreign", "version", "bad-meta", "pickled-object"],
)
def test_bad_checkpoint_file_gives_clear_error_naming_it(tmp_path, checkpoint, content, message):
    path = tmp_path / "bad.ckpt"
    if content == "truncated":
        data = checkpoint[0].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        NeuralRanker(checkpoint=str(path))
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match=r"bad\.ckpt"):
        build_learner("neural", "nn", {"checkpoint": str(path)})


def test_checkpoint_with_mismatched_weights_is_rejected(tmp_path, checkpoint):
    ckpt = load_checkpoint(checkpoint[0])
    ckpt.weights["head.weight"] = torch.zeros(1, 3)
    from pipeline.learners.neural import save_checkpoint

    path = save_checkpoint(tmp_path / "odd.ckpt", ckpt)
    with pytest.raises(CheckpointError, match=r"odd\.ckpt does not fit its own architecture"):
        NeuralRanker(checkpoint=str(path))


# ------------------------------------------------------------------------------ rank penalty and replay


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_rank_penalty_keeps_ranking_closer_to_warm_start(checkpoint):
    path, trained = checkpoint
    drifted = features(2500, seed=0, drifts=(Drift(0, "abrupt"),))
    heldout = drifted[-1]
    ref = trained.predict(heldout)
    corr = {}
    for penalty in (0.0, 5.0):
        learner = NeuralRanker(checkpoint=str(path), rank_penalty=penalty)
        run(learner, drifted[:-1])
        corr[penalty] = _spearman(learner.predict(heldout), ref)
    assert corr[5.0] > corr[0.0] + 0.05


def test_rank_penalty_without_checkpoint_is_refused():
    with pytest.raises(ValueError, match="rank_penalty > 0 needs a checkpoint"):
        NeuralRanker(rank_penalty=1.0)


def test_replay_buffer_keeps_newest_events_in_ring_order():
    buf = ReplayBuffer(capacity=3, max_fields=0, max_dense=0)
    for start in (1, 3):  # events 1..2 then 3..4: 1 is overwritten
        ids = np.arange(start, start + 2, dtype=np.uint64)
        buf.push(HashedBatch(ids, ids, np.zeros((2, 0), np.uint64), np.zeros((2, 0), np.float32)), ids * 1.0)
    sampled, labels = buf.sample(200, np.random.default_rng(0))
    assert sorted(set(sampled.user.tolist())) == [2, 3, 4]
    np.testing.assert_array_equal(labels, sampled.user.astype(np.float32))


def test_replay_changes_updates(stream):
    preds = []
    for size in (0, 400):
        learner = NeuralRanker(**SMALL, replay_size=size)
        run(learner, stream[:4])
        preds.append(learner.predict(stream[4]))
    assert not np.array_equal(*preds)


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": -1}, "lr must be > 0, got -1"),
        ({"embedding_lr": 0}, "embedding_lr must be > 0, got 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of adam, adagrad, sgd, got 'rmsprop'"),
        ({"vocab": "lru"}, "vocab must be one of collision_free, double_hash, got 'lru'"),
        ({"dim": 0}, "dim must be an integer >= 1, got 0"),
        ({"hidden": []}, "hidden must be a non-empty list"),
        ({"hidden": 16}, "hidden must be a non-empty list of widths >= 1, got 16"),
        ({"min_count": 0}, "min_count must be an integer >= 1, got 0"),
        ({"max_age": -5}, "max_age must be an integer >= 0, got -5"),
        ({"replay_ratio": -0.5}, "replay_ratio must be >= 0, got -0.5"),
        ({"replay_size": 2.5}, "replay_size must be an integer >= 0, got 2.5"),
        ({"ope_window": 0}, "ope_window must be an integer >= 1, got 0"),
        ({"seed": "x"}, "seed must be an integer, got 'x'"),
    ],
)
def test_invalid_parameter_is_named_in_error(params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NeuralRanker(**params)


def test_registry_builds_neural_learner_with_params():
    learner = build_learner("neural", "nn", {"dim": 8, "hidden": [16], "user_rows": 32})
    assert isinstance(learner, NeuralRanker) and learner.name == "nn"
    assert learner.spec.hidden == (16,) and learner.clone().params() == learner.params()


# ------------------------------------------------------------------------------ off-policy evaluation glue


def test_ranking_policy_matches_hand_computed_softmax_and_greedy():
    logits = np.array([[0.0, math.log(2.0), math.log(5.0)], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(ranking_policy(logits[:1], 1.0), [[0.125, 0.25, 0.625]], rtol=1e-12)
    # temperature 0.5 squares the odds: 1 : 4 : 25
    np.testing.assert_allclose(ranking_policy(logits[:1], 0.5), [[1 / 30, 4 / 30, 25 / 30]], rtol=1e-12)
    assert ranking_policy(logits, 0.0).tolist() == [[0, 0, 1], [1, 0, 0]]  # ties: lowest index


def test_logged_rounds_give_hand_computed_ips_snips_dr():
    # two requests, two candidates; logits log(1), log(3) -> pi = (0.25, 0.75); q = sigmoid(z) = (0.5, 0.75)
    z = np.log(np.array([[1.0, 3.0], [1.0, 3.0]]))
    rounds = logged_rounds(z, np.array([1, 0]), np.array([1.0, 1.0]), np.array([0.5, 0.25]), 1.0)
    np.testing.assert_allclose(rounds.target_prob, [0.75, 0.25])
    np.testing.assert_allclose(rounds.q_hat, [0.75, 0.5])
    np.testing.assert_allclose(rounds.q_target, [0.25 * 0.5 + 0.75 * 0.75] * 2)
    # w = (1.5, 1.0): IPS = 2.5 / 2; SNIPS = 2.5 / 2.5; DR = 0.6875 + (1.5 * 0.25 + 1.0 * 0.5) / 2
    assert IPS().estimate_policy_value(rounds) == pytest.approx(1.25)
    assert SNIPS().estimate_policy_value(rounds) == pytest.approx(1.0)
    assert DoublyRobust().estimate_policy_value(rounds) == pytest.approx(0.6875 + 0.4375)


def test_policy_value_window_keeps_last_rounds_only():
    window = PolicyValueWindow(2)
    window.update(LoggedBandit([1.0], [0.5], [1.0], [0.5], [0.5]))
    window.update(LoggedBandit([0.0, 1.0], [0.5, 0.25], [0.5, 0.25], [0.5, 0.5], [0.5, 0.5]))
    # rounds kept: w = (1, 1), r = (0, 1)
    assert window.values()["IPS"] == pytest.approx(0.5)
    assert window.values()["ESS"] == pytest.approx(2.0)


def _candidate_log(n: int, seed: int):
    """Logged top-1 events with their full candidate sets, and the truth of the target policy's value."""
    sim = Simulator(seed=seed, n_users=80, n_items=30, epsilon=0.3)
    env, policy = sim.environment(), sim.logging_policy()
    ctx = env.contexts(n)
    items, props = policy.select(ctx, 1)
    labels = env.step(ctx, items)
    fz = Featurizer()
    logged = fz.transform_and_update(decode_arrow(env.records(ctx, items, labels, props), EventRules())[0])
    cands = fz.transform(decode_arrow(env.records(ctx, ctx.candidates), EventRules())[0])
    p_true = env.reward_probabilities(
        ctx, ctx.candidates, positions=np.zeros(ctx.candidates.shape[1], np.int64)
    )
    return logged, cands, p_true


def test_evaluate_policy_ips_agrees_with_true_value_of_target(stream):
    learner = NeuralRanker(**SMALL, ope_temperature=0.5, ope_window=5000, name="nn")
    run(learner, stream)
    logged, cands, p_true = _candidate_log(4000, seed=0)
    k = p_true.shape[1]
    pi = ranking_policy(learner.logits(cands).reshape(-1, k), 0.5)
    truth = float((pi * p_true).sum(axis=1).mean())
    est = learner.evaluate_policy(logged, cands)
    assert set(est) == {"IPS", "SNIPS", "DR"}
    for name in ("IPS", "SNIPS", "DR"):
        assert abs(est[name].value - truth) < 4 * est[name].std_error + 0.01, (name, est[name], truth)
    assert 100 < est["IPS"].ess <= len(logged)
    gauges = {(m, lbl.get("estimator")): v for m, lbl, v in learner.gauges()}
    assert gauges[("streamlearn_policy_value_estimate", "DR")] == est["DR"].value
    assert learner.policy_values()["ESS"] == est["IPS"].ess


def test_evaluate_policy_without_logged_item_among_candidates_raises(stream):
    _, cands, _ = _candidate_log(20, seed=1)
    other, _, _ = _candidate_log(20, seed=2)
    with pytest.raises(ValueError, match=r"logged item of event \d+ is not among its candidates"):
        NeuralRanker(**SMALL).evaluate_policy(other, cands)


# ------------------------------------------------------------------------------ pretraining


def test_pretrain_splits_by_time_and_keeps_best_epoch(stream):
    learner = NeuralRanker(**SMALL, seed=2)
    report = pretrain(learner, stream, epochs=12, batch_size=128, val_fraction=0.3, patience=1)
    assert (report.n_train, report.n_val) == (2100, 900)
    assert report.stopped_early and report.epochs_run < 12
    best = min(report.history, key=lambda r: r["val_logloss"])
    assert report.best_epoch == best["epoch"]
    # the kept weights are the best epoch's: validation logloss recomputed equals its row
    val = stream[-4:]  # 1000 newest events; the validation part is the newest 900 of them
    y = np.concatenate([fb.labels for fb in val])[100:]
    p = np.concatenate([learner.predict(fb) for fb in val])[100:]
    assert logloss(y, p) == pytest.approx(best["val_logloss"], rel=1e-5)


def test_pretrain_admits_only_training_ids(stream):
    fz = Featurizer()
    late = Simulator(seed=0, n_users=80, n_items=30, start_ts=1_800_000_000_000).batches(200)
    late_fb = fz.transform(decode_arrow(next(late), EventRules())[0])
    learner = NeuralRanker(**SMALL)
    pretrain(learner, [stream[0], late_fb], epochs=1, val_fraction=200 / 450)  # the late batch validates
    known = learner._vocabs["user"].lookup(late_fb.user_hash)[:, 0]
    train_users = set(stream[0].user_hash.tolist())
    for h, row in zip(late_fb.user_hash.tolist(), known.tolist()):
        assert (row > 0) == (h in train_users)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"patience": 0}, "patience must be an integer >= 1, got 0"),
    ],
)
def test_pretrain_invalid_arguments_are_named(kwargs, message, stream):
    with pytest.raises(ValueError, match=message):
        pretrain(NeuralRanker(**SMALL), stream[:1], **kwargs)


def test_pretrain_command_writes_checkpoint_that_warm_starts(tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_batches(list(Simulator(seed=4, n_users=50, n_items=20).batches(1500))), log)
    config = tmp_path / "c.toml"
    config.write_text('[[learners]]\nkind = "neural"\nparams = { dim = 8, hidden = [16], user_rows = 64 }\n')
    parser = argparse.ArgumentParser()
    pretrain_cmd.register(parser.add_subparsers())
    out = tmp_path / "m.ckpt"
    args = parser.parse_args(
        ["pretrain", str(log), "--out", str(out), "--epochs", "2", "--config", str(config)]
    )
    assert args.func(args) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.spec.dim == 8 and ckpt.info["report"]["n_train"] == 1350
    assert NeuralRanker(checkpoint=str(out)).spec.user_rows == 64


def test_pretrain_command_with_missing_log_is_a_config_error(tmp_path):
    parser = argparse.ArgumentParser()
    pretrain_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["pretrain", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m.ckpt")])
    with pytest.raises(ConfigError, match=r"nope\.jsonl"):
        args.func(args)
