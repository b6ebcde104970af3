"""``streamlearn export``: the TorchScript file of a snapshot's neural ranker scores as the live model does."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from consumers.cli import main
from pipeline.config import load_config
from pipeline.events import EventRules, decode_json
from pipeline.learners.neural.export import exported_inputs, load_exported
from pipeline.runner import Runner
from state.snapshot import SnapshotStore
from tests.test_serving import _stream


def _replay(tmp_path, stream, state, *learners: str) -> None:
    args = [
        "replay",
        str(stream),
        "--state-dir",
        str(state),
        "--no-progress",
        "--dead-letter",
        str(tmp_path / "d.jsonl"),
    ]
    for learner in learners:
        args += ["--learner", learner]
    assert main(args) == 0


@pytest.mark.parametrize("vocab", ["collision_free", "double_hash"])
def test_export_loads_and_matches_the_snapshot_model_to_1e_5(tmp_path, vocab):
    stream = _stream(tmp_path / "a.jsonl", 5000, 3)
    state = tmp_path / "state"
    learner = f"neural:vocab={vocab},name=ranker"
    _replay(tmp_path, stream, state, learner)
    out = tmp_path / "ranker.pt"
    assert main(["export", "--state-dir", str(state), "--learner", "ranker", "--out", str(out)]) == 0

    module, meta = load_exported(str(out))
    assert (
        meta["vocabularies"]["user"]
        == {"collision_free": "CollisionFreeVocab", "double_hash": "DoubleHashVocab"}[vocab]
    )
    assert meta["version"]["snapshot_seq"] == SnapshotStore(state).latest_valid()[0]["seq"]
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; the file format stays
        warnings.simplefilter("ignore", FutureWarning)
        plain = torch.jit.load(str(out))  # any libtorch loads it: no streamlearn code inside
    # the live model, loaded the long way, on events it has not seen
    _, bundles = SnapshotStore(state).latest_valid()
    runner = Runner.from_config(
        load_config(
            overrides={"learners": [{"kind": "neural", "name": "ranker", "params": {"vocab": vocab}}]},
            environ={},
        )
    )
    runner.load_state(bundles)
    fresh = _stream(tmp_path / "b.jsonl", 700, 4).read_bytes().splitlines()
    events, _ = decode_json(fresh, EventRules())
    features = runner.featurizer.transform(events)
    ranker = runner.learners[0]
    live = ranker.predict(features)
    inputs = exported_inputs(ranker._hash(features, grow=False))
    with torch.no_grad():
        for n in (len(live), 1, 37):  # any batch size
            got = plain(*[t[:n] for t in inputs]).double().numpy()
            np.testing.assert_allclose(got, live[:n], atol=1e-5)
            np.testing.assert_allclose(module(*[t[:n] for t in inputs]).double().numpy(), got)


def test_export_of_a_learner_that_is_not_a_neural_ranker_names_the_ones_there(tmp_path, capsys):
    stream = _stream(tmp_path / "a.jsonl", 1000, 3)
    state = tmp_path / "state"
    _replay(tmp_path, stream, state, "ftrl", "neural")
    assert (
        main(["export", "--state-dir", str(state), "--learner", "ftrl", "--out", str(tmp_path / "x.pt")]) == 2
    )
    assert "neural rankers there: neural" in capsys.readouterr().err
