"""Hybrid offline + online bandit contexts: a pretrained ranker's embeddings next to the features.

References are computed independently of the code under test: embeddings by a dict lookup of the
checkpoint's vocabulary and weight tensors, scales by brute force over known ids (and pairs),
policy estimates by solving the ridge / diagonal statistics by hand on hand-built contexts."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import orjson
import pytest
import torch

from pipeline.errors import ConfigError, SnapshotError
from pipeline.events import EventRules, decode_arrow, decode_json
from pipeline.features import Featurizer
from pipeline.learners.bandits import (
    DiagLinUCB,
    FrozenEmbeddings,
    LinUCB,
    context_vectors,
    hybrid_contexts,
)
from pipeline.learners.bandits.embeddings import embedding_scales
from pipeline.learners.base import StateBundle
from pipeline.learners.neural import NeuralRanker, load_checkpoint, pretrain
from pipeline.learners.registry import build_learner
from pipeline.simulate import Simulator

SPEC = dict(dim=4, user_rows=128, item_rows=64, feature_rows=64, hidden=(8,), cross_rank=2)
EXCLUDE = ("price", "category")
CONTEXT_KINDS = {
    "linucb": {"alpha": 0.5},
    "diag_linucb": {"alpha": 0.5},
    "linear_ts": {"v": 0.5, "n_mc": 16},
    "epsilon_greedy": {"epsilon": 0.1},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def featurizer() -> Featurizer:
    return Featurizer()


@pytest.fixture(scope="module")
def stream(featurizer) -> list:
    sim = Simulator(seed=0, n_users=80, n_items=30)
    return [
        featurizer.transform_and_update(decode_arrow(b, EventRules())[0])
        for b in sim.batches(4000, chunk_size=250)
    ]


def _pretrain(stream: list, seed: int, path) -> str:
    learner = NeuralRanker(**SPEC, seed=seed)
    pretrain(learner, stream[:8], epochs=2, batch_size=256, val_fraction=0.2)
    learner.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, stream) -> str:
    return _pretrain(stream, 3, tmp_path_factory.mktemp("ckpt") / "ranker.ckpt")


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory, stream) -> str:
    return _pretrain(stream, 4, tmp_path_factory.mktemp("ckpt2") / "ranker.ckpt")


def _unknown_batch(featurizer: Featurizer):
    rows = [
        orjson.dumps(
            {
                "event_id": f"x{i}",
                "ts": 1_800_000_000_000 + i,
                "user_id": f"nobody{i}",
                "item_id": "i0",
                "label": 1,
            }
        )
        for i in range(3)
    ]
    return featurizer.transform(decode_json(rows, EventRules())[0])


def _hand_embeddings(path: str, hashes: np.ndarray, table: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, known)``: the checkpoint's row of each id by dict lookup, row 0 when unknown."""
    ck = load_checkpoint(path)
    arrays = ck.vocabs[table].arrays
    row_of = dict(zip(arrays["key"].tolist(), arrays["row"].tolist(), strict=True))
    weight = ck.weights[f"{table}.weight"].numpy()
    rows = [row_of.get(int(h), 0) for h in hashes]
    return weight[rows], np.array(rows) > 0


def _hand_scales(path: str) -> dict[str, float]:
    """1 / RMS norm over known ids, and over every (known user, known item) pair by brute force."""
    ck = load_checkpoint(path)
    known = {}
    for t in ("user", "item"):
        known[t] = ck.weights[f"{t}.weight"].numpy()[ck.vocabs[t].arrays["row"]].astype(np.float64)
    pairs = known["user"][:, None, :] * known["item"][None, :, :]
    return {
        "user": 1 / np.sqrt((known["user"] ** 2).sum(1).mean()),
        "item": 1 / np.sqrt((known["item"] ** 2).sum(1).mean()),
        "user_x_item": 1 / np.sqrt((pairs**2).sum(2).mean()),
    }


def _hand_contexts(path: str, fb, dim: int, parts: tuple[str, ...]) -> np.ndarray:
    user, _ = _hand_embeddings(path, fb.user_hash, "user")
    item, _ = _hand_embeddings(path, fb.item_hash, "item")
    scale = _hand_scales(path)
    blocks = {"user": user, "item": item, "user_x_item": user * item}
    width = SPEC["dim"] * len(parts)
    tail = [scale[p] * blocks[p].astype(np.float64) for p in parts]
    return np.hstack([context_vectors(fb, dim - width, EXCLUDE), *tail])


# ------------------------------------------------------------------------------ NeuralRanker.embeddings


def test_embeddings_equal_hand_lookup_of_the_checkpoint(ckpt, stream, featurizer):
    ranker = NeuralRanker(checkpoint=ckpt)
    fb = stream[9]
    user, item = ranker.embeddings(fb)
    assert user.shape == item.shape == (len(fb), SPEC["dim"]) and user.dtype == item.dtype == np.float32
    hand_user, known_user = _hand_embeddings(ckpt, fb.user_hash, "user")
    hand_item, known_item = _hand_embeddings(ckpt, fb.item_hash, "item")
    assert known_user.mean() > 0.9 and known_item.all()  # the check is about known ids
    np.testing.assert_array_equal(user, hand_user)
    np.testing.assert_array_equal(item, hand_item)
    # unknown ids: the shared unknown row, and nothing is admitted
    new = _unknown_batch(featurizer)
    before = ranker._vocabs["user"].rows_in_use()
    u_new, _ = ranker.embeddings(new)
    np.testing.assert_array_equal(u_new, np.repeat(ranker._model.user.weight[:1].detach().numpy(), 3, axis=0))
    assert ranker._vocabs["user"].rows_in_use() == before
    empty = Featurizer().transform(decode_json([], EventRules())[0])
    empty_u, empty_i = ranker.embeddings(empty)
    assert empty_u.shape == empty_i.shape == (0, SPEC["dim"])


def test_double_hash_embedding_is_the_sum_of_the_two_bucket_rows(stream):
    ranker = NeuralRanker(**{**SPEC, "vocab": "double_hash"}, seed=1)
    ranker.learn(stream[0], ranker.predict(stream[0]))
    fb = stream[1]
    user, _ = ranker.embeddings(fb)
    m = np.uint64(SPEC["user_rows"] - 1)
    keys = np.asarray(fb.user_hash, np.uint64)
    r1 = ((keys & np.uint64(0xFFFFFFFF)) % m).astype(np.int64) + 1
    r2 = ((keys >> np.uint64(32)) % m).astype(np.int64) + 1
    w = ranker._model.user.weight.detach().numpy()
    np.testing.assert_allclose(user, w[r1] + w[r2], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ contexts


def test_hybrid_contexts_are_features_then_scaled_embeddings(ckpt, stream):
    parts = ("user", "item", "user_x_item")
    emb = FrozenEmbeddings.load(ckpt, parts)
    dim = 6 + emb.width
    fb = stream[10]
    x = emb.contexts(fb, dim, EXCLUDE)
    assert x.shape == (len(fb), dim) and emb.width == 12
    hand = _hand_scales(ckpt)
    np.testing.assert_allclose(emb.scales, [hand[p] for p in parts], rtol=1e-9)
    np.testing.assert_allclose(x, _hand_contexts(ckpt, fb, dim, parts), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(x[:, :6], context_vectors(fb, 6, EXCLUDE))
    # the RMS norm of each part over known ids is 1 by construction
    ranker = NeuralRanker(checkpoint=ckpt)
    np.testing.assert_allclose(embedding_scales(ranker, parts), emb.scales)
    # the public helper gives the same contexts from any ranker
    np.testing.assert_allclose(hybrid_contexts(fb, dim, ranker, parts, EXCLUDE), x, rtol=1e-12)


def test_hybrid_contexts_reject_bad_parts_and_small_dim(ckpt, stream):
    ranker = NeuralRanker(checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"dim=5 leaves 1 slots .* dim must be >= 6"):
        hybrid_contexts(stream[0], 5, ranker, ("user",))
    for parts in (("usr",), (), ("user", "user")):
        with pytest.raises(ValueError, match="embedding_parts must be a non-empty list of distinct names"):
            hybrid_contexts(stream[0], 20, ranker, parts)


# ------------------------------------------------------------------------------ policies


@pytest.mark.parametrize("kind", sorted(CONTEXT_KINDS))
def test_every_contextual_policy_takes_the_option_and_learns_on_hybrid_contexts(kind, ckpt, stream):
    dim = 10
    params = {
        "dim": dim,
        "embedding_checkpoint": ckpt,
        "exclude_features": list(EXCLUDE),
        **CONTEXT_KINDS[kind],
    }
    policy = build_learner(kind, params=params)
    assert policy.params()["embedding_checkpoint"] == ckpt and policy.params()["embedding_parts"] == ("user",)
    train = stream[8:12]
    for fb in train:
        np.testing.assert_allclose(
            policy.batch_contexts(fb), _hand_contexts(ckpt, fb, dim, ("user",)), rtol=1e-6
        )
        policy.learn(fb, policy.predict(fb))
    test = stream[12]
    got = policy.predict(test)
    # independent reference: per-arm statistics solved by hand on hand-built contexts
    X = np.vstack([_hand_contexts(ckpt, fb, dim, ("user",)) for fb in train])
    r = np.concatenate([fb.labels for fb in train]).astype(np.float64)
    arms = np.concatenate([fb.item_hash for fb in train])
    Xt = _hand_contexts(ckpt, test, dim, ("user",))
    expected = np.empty(len(test))
    for i, (x, a) in enumerate(zip(Xt, test.item_hash, strict=True)):
        sel = arms == a
        if kind == "diag_linucb":  # centred: an intercept and per-coordinate slopes
            if not sel.any():
                expected[i] = 0.0
                continue
            xbar, rbar = X[sel].mean(0), r[sel].mean()
            Xc = X[sel] - xbar
            d = 1.0 + (Xc**2).sum(0)
            expected[i] = rbar + (x - xbar) @ ((Xc * (r[sel] - rbar)[:, None]).sum(0) / d)
        else:
            theta = np.linalg.solve(np.eye(dim) + X[sel].T @ X[sel], X[sel].T @ r[sel])
            expected[i] = x @ theta
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-6)
    assert got.std() > 0.01
    chosen, props = policy.select(Xt[:5], policy.arm_ids[:6])
    assert chosen.shape == props.shape == (5, 1) and np.isfinite(props).all()


def test_context_free_policy_takes_no_checkpoint(ckpt):
    with pytest.raises(ConfigError, match="embedding_checkpoint"):
        build_learner("beta_ts", params={"embedding_checkpoint": ckpt})


def test_the_ranker_stays_frozen_while_the_policy_learns(ckpt, stream):
    policy = LinUCB(dim=10, embedding_checkpoint=ckpt)
    for fb in stream[8:11]:
        policy.learn(fb, policy.predict(fb))
    weights = load_checkpoint(ckpt).weights
    model = policy._embeddings.ranker._model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    assert not any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------ state


def _through_json(bundle: StateBundle) -> StateBundle:
    return StateBundle(
        tables=dict(bundle.tables), arrays=dict(bundle.arrays), meta=json.loads(json.dumps(bundle.meta))
    )


@pytest.mark.parametrize("cls", [LinUCB, DiagLinUCB])
def test_snapshot_round_trip_predicts_identically(cls, ckpt, stream, tmp_path):
    policy = cls(dim=10, embedding_checkpoint=ckpt, embedding_parts=["user"], seed=5)
    for fb in stream[8:11]:
        policy.learn(fb, policy.predict(fb))
    bundle = _through_json(policy.state())
    assert bundle.meta["embedding"]["checkpoint"] == ckpt
    assert bundle.meta["embedding"]["parts"] == ["user"] and len(bundle.meta["embedding"]["sha256"]) == 64
    assert bundle.meta["params"]["embedding_parts"] == ["user"]
    # restored from a moved copy of the same file: the path may change, the content may not
    moved = tmp_path / "moved.ckpt"
    shutil.copyfile(ckpt, moved)
    for path in (ckpt, str(moved)):
        restored = cls(dim=10, embedding_checkpoint=path, seed=5)
        restored.load_state(bundle)
        test = stream[12]
        np.testing.assert_array_equal(restored.predict(test), policy.predict(test), strict=True)
        X = policy.batch_contexts(test)
        np.testing.assert_array_equal(
            restored.select(X, policy.arm_ids)[0], policy.select(X, policy.arm_ids)[0]
        )


def test_mismatched_embedding_config_on_load_fails(ckpt, other_ckpt, stream):
    policy = LinUCB(dim=10, embedding_checkpoint=ckpt)
    policy.learn(stream[8], policy.predict(stream[8]))
    bundle = _through_json(policy.state())
    with pytest.raises(SnapshotError, match=r"learned with embedding_checkpoint .*; this policy has none"):
        LinUCB(dim=10).load_state(bundle)
    with pytest.raises(SnapshotError, match=r"embedding_parts=\['user'\], this policy has \['item'\]"):
        LinUCB(dim=10, embedding_checkpoint=ckpt, embedding_parts=("item",)).load_state(bundle)
    with pytest.raises(SnapshotError, match="is a different file"):
        LinUCB(dim=10, embedding_checkpoint=other_ckpt).load_state(bundle)
    plain = LinUCB(dim=10)
    plain.learn(stream[8], plain.predict(stream[8]))
    with pytest.raises(
        SnapshotError, match="learned without embedding contexts; this policy has embedding_checkpoint"
    ):
        LinUCB(dim=10, embedding_checkpoint=ckpt).load_state(_through_json(plain.state()))


def test_merging_refuses_workers_in_other_embedding_spaces(ckpt, other_ckpt):
    a = DiagLinUCB(dim=10, embedding_checkpoint=ckpt)
    with pytest.raises(ValueError, match="other embedding contexts"):
        DiagLinUCB.merged([a, DiagLinUCB(dim=10, embedding_checkpoint=other_ckpt)])
    with pytest.raises(ValueError, match="other embedding contexts"):
        DiagLinUCB.merged([a, DiagLinUCB(dim=10)])
    assert (
        DiagLinUCB.merged([a, DiagLinUCB(dim=10, embedding_checkpoint=ckpt)]).embedding_meta()
        == a.embedding_meta()
    )


# ------------------------------------------------------------------------------ configuration errors


def test_configuration_errors_name_the_parameter(ckpt, tmp_path):
    with pytest.raises(ConfigError, match=r"embedding_parts must be a non-empty list .* got \['usr'\]"):
        build_learner("linucb", params={"dim": 10, "embedding_checkpoint": ckpt, "embedding_parts": ["usr"]})
    with pytest.raises(
        ConfigError, match=r"dim=5 leaves 1 context slots .* embedding_parts=\['user'\] .* dim must be >= 6"
    ):
        build_learner("linucb", params={"dim": 5, "embedding_checkpoint": ckpt})
    with pytest.raises(ConfigError, match="dim must be >= 14"):
        build_learner(
            "diag_linucb",
            params={
                "dim": 12,
                "embedding_checkpoint": ckpt,
                "embedding_parts": ["user", "item", "user_x_item"],
            },
        )
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(
        ConfigError,
        match=re.escape(f"embedding_checkpoint could not be loaded: checkpoint file not found: {missing}"),
    ):
        build_learner("linucb", params={"dim": 10, "embedding_checkpoint": str(missing)})
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(
        ConfigError,
        match=re.escape(f"embedding_checkpoint could not be loaded: {garbage} is not a readable checkpoint"),
    ):
        build_learner("epsilon_greedy", params={"dim": 10, "embedding_checkpoint": str(garbage)})
