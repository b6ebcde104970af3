"""The learner conformance suite: every learner must pass it (STYLE §3, docs/design.md §5).

To add a learner, append a :class:`Case` to ``CONFORMANCE_LEARNERS`` (its ``kind`` and ``params``
as the configuration would give them). Each case is checked for:

- a snapshot round-trip through the real :class:`SnapshotStore`, restored in a *fresh process*,
  gives identical predictions on a held-out batch;
- run A (2N events straight) equals run B (N events, snapshot, restore into a fresh runner,
  N more) bit for bit, state and predictions;
- the same seed gives the same result;
- a batch is never mutated by ``predict`` / ``learn``;
- ``state()`` is a copy that later learning does not change (background snapshots rely on it);
- unseen users, items and features are scored and learned without error;
- scoring (the featurizer's ``transform``, ``predict``, and a policy's ``distribution`` and
  ``predict_arrays``) leaves ``state()`` byte-identical: serving builds on it.

Every registered kind must have a case here (``test_every_registered_kind_has_a_case``), and
every kind must run through ``streamlearn replay --learner KIND`` with its defaults.

The module also holds the small synthetic stream that the other state tests use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from consumers.cli import main
from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureBatch
from pipeline.learners.base import Policy, StateBundle
from pipeline.learners.registry import build_learner, known_kinds
from pipeline.runner import RawBatch, Runner
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def id(self) -> str:
        return self.name or self.kind


#: stands for the path of a small pretrain checkpoint, built once by the ``case`` fixture
EMBEDDING_CHECKPOINT = "<embedding checkpoint>"

CONFORMANCE_LEARNERS: list[Case] = [
    Case("ftrl", {"bits": 14, "alpha": 0.1}),
    Case("river:linear_model.LogisticRegression"),
    Case("linucb", {"dim": 8}),
    Case("linucb", {"dim": 12, "embedding_checkpoint": EMBEDDING_CHECKPOINT}, name="linucb+embeddings"),
    Case("diag_linucb", {"dim": 8}),
    Case("linear_ts", {"dim": 8, "n_mc": 8}),
    Case("beta_ts", {"n_mc": 8}),
    Case("epsilon_greedy", {"dim": 8}),
    Case("hybrid_linucb", {"dim": 8, "action_dim": 4, "item_features": ["price"]}),
    Case("hybrid_ts", {"dim": 8, "action_dim": 4, "n_mc": 8, "item_features": ["price"], "per_arm": False}),
    Case("bootstrap", {"dim": 8, "bags": 3}),
    Case("neural_linucb", {"checkpoint": EMBEDDING_CHECKPOINT}),
    Case("neural_ts", {"checkpoint": EMBEDDING_CHECKPOINT, "n_mc": 8, "per_arm": True}),
    Case("error_memory", {"base": "ftrl", "base_params": {"bits": 14, "alpha": 0.1}, "bits": 6, "tables": 4}),
    Case(
        "neural",
        {
            "dim": 8,
            "hidden": [16],
            "user_rows": 64,
            "item_rows": 32,
            "feature_rows": 32,
            "cross_rank": 4,
            "replay_size": 200,
        },
    ),
]

N = 400  # events per half of a run
BATCH = 100


# ------------------------------------------------------------------------------------ the stream


def make_events(
    n: int, seed: int = 0, first: int = 0, users: int = 30, items: int = 12, prefix: str = ""
) -> list[bytes]:
    """``n`` JSON events with ids, a categorical and a numeric feature, labels from a fixed logistic model."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    it = rng.integers(0, items, n)
    device = rng.integers(0, 3, n)
    price = np.round(rng.random(n) * 20, 2)
    logit = 0.6 * (u % 4 - 1.5) + 0.9 * (it % 3 - 1) - 0.05 * price + 0.4 * (device == 1)
    label = rng.random(n) < 1 / (1 + np.exp(-logit))
    return [
        json.dumps(
            {
                "event_id": f"{prefix}e{first + i}",
                "ts": 1_700_000_000_000 + (first + i) * 1000,
                "user_id": f"{prefix}u{u[i]}",
                "item_id": f"{prefix}i{it[i]}",
                "label": int(label[i]),
                "features": {"device": ["ios", "android", "web"][device[i]], "price": float(price[i])},
            }
        ).encode()
        for i in range(n)
    ]


def batches(events: list[bytes], first_row: int = 0, size: int = BATCH) -> list[RawBatch]:
    return [
        RawBatch(values=events[i : i + size], positions={"stream": first_row + min(i + size, len(events))})
        for i in range(0, len(events), size)
    ]


def make_runner(case: Case) -> Runner:
    return Runner([build_learner(case.kind, case.name, dict(case.params))], window=200, report_every=100)


def heldout_features(runner: Runner, seed: int = 99) -> FeatureBatch:
    events, dead = decode_json(make_events(150, seed=seed, first=10**6), EventRules())
    assert not dead
    return runner.featurizer.transform(events)


# ------------------------------------------------------------------------------------ comparisons


def assert_bundles_equal(a: dict[str, StateBundle], b: dict[str, StateBundle]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert sorted(x.arrays) == sorted(y.arrays), name
        for k in x.arrays:
            assert x.arrays[k].dtype == y.arrays[k].dtype, (name, k)
            np.testing.assert_array_equal(x.arrays[k], y.arrays[k], err_msg=f"{name}.{k}", strict=True)
        assert sorted(x.tables) == sorted(y.tables), name
        for k in x.tables:
            assert x.tables[k].equals(y.tables[k], check_metadata=False), (name, k)
        assert sorted(x.tensors) == sorted(y.tensors), name
        for k in x.tensors:
            import torch

            assert torch.equal(x.tensors[k], y.tensors[k]), (name, k)
        assert json.dumps(x.meta, sort_keys=True) == json.dumps(y.meta, sort_keys=True), name


def _deep_copy(bundles: dict[str, StateBundle]) -> dict[str, StateBundle]:
    return {
        n: StateBundle(
            tables=dict(b.tables),  # Arrow tables are immutable
            arrays={k: v.copy() for k, v in b.arrays.items()},
            tensors={k: v.clone() for k, v in b.tensors.items()},
            meta=json.loads(json.dumps(b.meta)),
        )
        for n, b in bundles.items()
    }


def _batch_arrays(fb: FeatureBatch) -> dict[str, Any]:
    out = {k: getattr(fb, k).copy() for k in ("indptr", "keys", "values", "user_hash", "item_hash")}
    out.update({f"numeric.{k}": v.copy() for k, v in fb.numeric.items()})
    out["events"] = pa.Table.from_batches([fb.events.table])
    return out


# ------------------------------------------------------------------------------------ the fresh process


def _predict_in_fresh_process(state_dir: str, case_json: str, out: str) -> None:
    """Child side: build the learner from its configuration, restore, predict the held-out batch."""
    case = Case(**json.loads(case_json))
    runner = make_runner(case)
    found = SnapshotStore(state_dir).latest_valid()
    assert found is not None, "no snapshot found"
    runner.load_state(found[1])
    np.save(out, runner.learners[0].predict(heldout_features(runner)))


# ------------------------------------------------------------------------------------ the suite


@pytest.fixture(scope="session")
def embedding_checkpoint(tmp_path_factory) -> str:
    """A small ranker pretrained on this module's stream, for cases with embedding contexts."""
    from pipeline.features import Featurizer
    from pipeline.learners.neural import NeuralRanker, pretrain

    events, _ = decode_json(make_events(2 * N, seed=7), EventRules())
    ranker = NeuralRanker(dim=4, user_rows=64, item_rows=32, feature_rows=32, hidden=(8,), cross_rank=2)
    pretrain(ranker, [Featurizer().transform(events)], epochs=2, batch_size=100, val_fraction=0.0)
    return str(ranker.save_checkpoint(tmp_path_factory.mktemp("conformance") / "ranker.ckpt"))


@pytest.fixture(params=CONFORMANCE_LEARNERS, ids=lambda c: c.id)
def case(request) -> Case:
    c = request.param
    if EMBEDDING_CHECKPOINT in c.params.values():
        path = request.getfixturevalue("embedding_checkpoint")
        c = Case(c.kind, {k: path if v == EMBEDDING_CHECKPOINT else v for k, v in c.params.items()}, c.name)
    return c


def test_restore_in_fresh_process_predicts_identically(case: Case, tmp_path: Path):
    runner = make_runner(case)
    for raw in batches(make_events(N)):
        runner.process(raw)
    store = SnapshotStore(tmp_path / "state")
    store.prepare()
    store.write(runner.state(), positions=runner.positions, events_applied=N, config_hash="conformance")
    expected = runner.learners[0].predict(heldout_features(runner))

    out = tmp_path / "pred.npy"
    code = (
        "import sys; from tests.test_conformance import _predict_in_fresh_process as f; "
        "f(sys.argv[1], sys.argv[2], sys.argv[3])"
    )
    case_json = json.dumps({"kind": case.kind, "params": case.params, "name": case.name})
    done = subprocess.run(
        [sys.executable, "-c", code, str(store.root), case_json, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = np.load(out, allow_pickle=False)
    np.testing.assert_array_equal(got, expected, strict=True)
    assert 0 < expected.std()  # a model that learned something, or the check proves little


def test_run_with_snapshot_and_restore_equals_straight_run(case: Case, tmp_path: Path):
    events = make_events(2 * N, seed=1)
    straight = make_runner(case)
    for raw in batches(events):
        straight.process(raw)

    first = make_runner(case)
    with Checkpointer(SnapshotStore(tmp_path / "state"), "h", background=False, catalog=False) as ckpt:
        for raw in batches(events[:N]):
            first.process(raw)
        ckpt.final(first)
    del first  # "kill": nothing of the first runner survives but its snapshot
    resumed = make_runner(case)
    with Checkpointer(SnapshotStore(tmp_path / "state"), "h", background=False, catalog=False) as ckpt:
        assert ckpt.restore(resumed)["positions"] == {"stream": N}
    for raw in batches(events[N:], first_row=N):
        resumed.process(raw)

    assert_bundles_equal(straight.state(), resumed.state())
    assert resumed.positions == straight.positions == {"stream": 2 * N}
    np.testing.assert_array_equal(
        straight.learners[0].predict(heldout_features(straight)),
        resumed.learners[0].predict(heldout_features(resumed)),
        strict=True,
    )


def test_same_seed_twice_gives_same_state(case: Case):
    runs = []
    for _ in range(2):
        runner = make_runner(case)
        for raw in batches(make_events(N, seed=2)):
            runner.process(raw)
        runs.append(runner.state())
    assert_bundles_equal(*runs)


def test_predict_and_learn_never_mutate_the_batch(case: Case):
    runner = make_runner(case)
    learner = runner.learners[0]
    events, _ = decode_json(make_events(BATCH, seed=3), EventRules())
    fb = runner.featurizer.transform(events)
    before = _batch_arrays(fb)
    learner.learn(fb, learner.predict(fb))
    after = _batch_arrays(fb)
    for k, v in before.items():
        if isinstance(v, pa.Table):
            assert v.equals(after[k]), k
        else:
            np.testing.assert_array_equal(v, after[k], err_msg=k, strict=True)


def test_state_is_a_copy_that_later_learning_leaves_alone(case: Case):
    runner = make_runner(case)
    stream = batches(make_events(N, seed=4))
    for raw in stream[: len(stream) // 2]:
        runner.process(raw)
    taken = runner.state()
    frozen = _deep_copy(taken)
    for raw in stream[len(stream) // 2 :]:
        runner.process(raw)
    assert_bundles_equal(taken, frozen)


def test_unseen_ids_are_scored_and_learned(case: Case):
    runner = make_runner(case)
    for raw in batches(make_events(N, seed=5)):
        runner.process(raw)
    learner = runner.learners[0]
    events, _ = decode_json(make_events(BATCH, seed=6, prefix="new-"), EventRules())
    fb = runner.featurizer.transform(events)
    p = learner.predict(fb)
    assert p.shape == (BATCH,) and p.dtype == np.float64
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    learner.learn(fb, p)
    assert np.all(np.isfinite(learner.predict(fb)))


def test_scoring_leaves_state_byte_identical(case: Case):
    runner = make_runner(case)
    for raw in batches(make_events(N, seed=8)):
        runner.process(raw)
    before = _deep_copy(runner.state())
    learner = runner.learners[0]
    for prefix in ("", "new-"):  # known ids, then unseen users, items and feature values
        events, _ = decode_json(make_events(BATCH, seed=9, prefix=prefix), EventRules())
        fb = runner.featurizer.transform(events)
        first = learner.predict(fb)
        np.testing.assert_array_equal(learner.predict(fb), first, strict=True)
        if isinstance(learner, Policy):
            contexts = learner.batch_contexts(fb)
            candidates = np.array([*sorted(set(events.strings("item_id"))), "never-seen"], dtype=object)
            learner.distribution(contexts, candidates)
            learner.predict_arrays(contexts, events.strings("item_id"))
    assert_bundles_equal(runner.state(), before)


def kinds_without_case(kinds: list[str], cases: list[Case]) -> list[str]:
    """Registered kinds (``river:`` counts as one) that no conformance case exercises."""
    covered = {"river:<estimator>" if c.kind.startswith("river:") else c.kind for c in cases}
    return sorted(set(kinds) - covered)


def test_every_registered_kind_has_a_case():
    assert kinds_without_case(known_kinds(), CONFORMANCE_LEARNERS) == []
    # and the check sees a kind that someone registers without adding a case
    assert kinds_without_case([*known_kinds(), "new_kind"], CONFORMANCE_LEARNERS) == ["new_kind"]


#: kinds that explore around a pretrained ranker: their one required parameter is its checkpoint
NEEDS_CHECKPOINT = ("neural_linucb", "neural_ts")


def test_every_kind_runs_from_the_command_line_with_its_defaults(tmp_path: Path, embedding_checkpoint):
    stream = tmp_path / "events.jsonl"
    stream.write_bytes(b"\n".join(make_events(2 * N, seed=10)) + b"\n")
    kinds = [k for k in known_kinds() if not k.startswith("river:")] + [
        "river:linear_model.LogisticRegression"
    ]
    argv = ["replay", str(stream), "--no-progress", "--summary-json", str(tmp_path / "summary.json")]
    specs = [f'{k}:checkpoint="{embedding_checkpoint}"' if k in NEEDS_CHECKPOINT else k for k in kinds]
    argv += [arg for k in specs for arg in ("--learner", k)]
    argv += [
        "--learner",
        'ftrl:alpha=0.2,bits=16,name="ftrl-tuned"',
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
    ]
    assert main(argv) == 0
    learners = json.loads((tmp_path / "summary.json").read_text())["learners"]
    assert set(learners) >= {*kinds[:-1], "ftrl-tuned"} - {"error_memory"}
    assert len(learners) == len(kinds) + 1
    for name, metrics in learners.items():
        assert 0.0 <= metrics["auc"] <= 1.0, name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "ftrl:alhpa=0.1",
            "learner 'ftrl': unknown parameter 'alhpa' (did you mean 'alpha'?); allowed: alpha, beta, bits, l1, l2",
        ),
        ("linucb:dimm=4", "unknown parameter 'dimm' (did you mean 'dim'?)"),
        ("river:linear_model.LogisticRegression:l3=1", "unknown parameter 'l3'; allowed: clip_gradient"),
        ("ftrl:bits=99", "learner 'ftrl': bits must be an integer"),
    ],
)
def test_a_bad_learner_parameter_gets_a_config_error(spec: str, message: str, tmp_path: Path, capsys):
    stream = tmp_path / "events.jsonl"
    stream.write_bytes(b"\n".join(make_events(10)) + b"\n")
    assert main(["replay", str(stream), "--no-progress", "--learner", spec]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
