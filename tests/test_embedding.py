"""``import streamlearn``: a snapshot's model in-process, as the HTTP replica serves it, never shadowed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

import streamlearn
from consumers.cli import main
from pipeline.events import EventRules, decode_json
from tests import test_serving
from tests.test_serving import BODY, LEARNERS, _post, _reference_scores, _stream

state_dir = test_serving.state_dir  # the replica tests' state directory and server fixtures
serve = test_serving.serve

CANDIDATES = BODY["candidates"]
FEATURES = BODY["features"]


def test_scores_equal_the_snapshot_model_loaded_the_long_way_and_the_replica(state_dir, serve):
    replica = serve()
    with streamlearn.load(state_dir) as model:
        assert set(model.names) == set(LEARNERS)
        assert model.version.snapshot_seq is not None and model.version.events_applied == 6000
        for name in ("ftrl", "neural", "diag_linucb"):
            got = model.score(name, "u3", CANDIDATES, FEATURES)
            expected = _reference_scores(state_dir, name, {**BODY, "model": name})
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
            status, answer = _post(replica.url + "/v1/score", {**BODY, "model": name})
            assert status == 200
            assert [c["score"] for c in answer["scores"]] == pytest.approx(got, abs=1e-12)


def test_decisions_carry_exact_propensities_and_are_logged_as_exposure_events(state_dir, tmp_path):
    log = tmp_path / "decisions.jsonl"
    with streamlearn.load(state_dir, decisions=log) as model:
        bandit = model.decide("diag_linucb", "u3", CANDIDATES, k=3, features=FEATURES, request_id="r1")
        assert bandit.policy == "diag_linucb" and len(set(bandit.items)) == 3
        scores = np.asarray(model.score("ftrl", "u3", CANDIDATES, FEATURES))
        soft = model.decide(
            "ftrl", "u3", CANDIDATES, features=FEATURES, exploration={"rule": "softmax", "temperature": 0.1}
        )
        p = np.exp((scores - scores.max()) / 0.1)
        assert soft.propensities[0] == pytest.approx(p[soft.positions[0]] / p.sum(), rel=1e-12)
        assert soft.policy == "ftrl+softmax(temperature=0.1)"
        assert model.exposures(soft)[0]["propensity"] == soft.propensities[0]
    lines = log.read_bytes().splitlines()
    assert len(lines) == 4
    events, dead = decode_json(lines, EventRules())
    assert not dead  # exposures are events, candidates included
    assert events.candidates.to_pylist() == [[c["item_id"] for c in CANDIDATES]] * 4
    assert [orjson.loads(x)["decision_id"] for x in lines] == [bandit.decision_id] * 3 + [soft.decision_id]


def test_bad_calls_name_the_field_and_a_missing_snapshot_is_one_error(state_dir, tmp_path):
    with streamlearn.load(state_dir) as model:
        with pytest.raises(streamlearn.RequestError, match="listed twice") as err:
            model.score("ftrl", "u1", ["a", "a"])
        assert err.value.field == "candidates"
        with pytest.raises(LookupError, match="no model 'nope'; loaded: "):
            model.score("nope", "u1", ["a"])
        with pytest.raises(streamlearn.RequestError, match=r"exploration\.rule"):
            model.decide("ftrl", "u1", ["a"], exploration="boltzmann")
    (tmp_path / "empty").mkdir()
    with pytest.raises(streamlearn.SnapshotError, match="no valid snapshot in"):
        streamlearn.load(tmp_path / "empty")
    with pytest.raises(streamlearn.SnapshotError, match="does not exist"):
        streamlearn.load(tmp_path / "missing")


def test_refresh_and_follow_load_each_newer_snapshot(state_dir, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(state_dir, state)
    pinned = streamlearn.load(state)
    followed = streamlearn.load(state, follow=True, poll_s=0.1)
    before = pinned.score("ftrl", "u3", CANDIDATES, FEATURES)
    args = ["replay", str(_stream(tmp_path / "b.jsonl", 3000, 2)), "--state-dir", str(state)]
    for kind in LEARNERS:
        args += ["--learner", kind]
    assert main([*args, "--dead-letter", str(tmp_path / "dlq.jsonl"), "--no-progress"]) == 0
    assert pinned.score("ftrl", "u3", CANDIDATES, FEATURES) == before  # until refreshed
    assert pinned.refresh() and pinned.version.events_applied == 9000
    assert not pinned.refresh()
    assert pinned.score("ftrl", "u3", CANDIDATES, FEATURES) != before
    deadline = time.monotonic() + 20
    while followed.version.events_applied != 9000:
        assert time.monotonic() < deadline, "follow did not load the new snapshot"
        time.sleep(0.05)
    assert followed.score("ftrl", "u3", CANDIDATES, FEATURES) == pinned.score(
        "ftrl", "u3", CANDIDATES, FEATURES
    )
    pinned.close()
    followed.close()


SCRIPT = """
import json, sys
import streamlearn
m = streamlearn.load(sys.argv[1])
print(json.dumps(m.score("ftrl", "u3", json.loads(sys.argv[2]), json.loads(sys.argv[3]))))
"""


def _app_dir(tmp_path: Path) -> Path:
    """An application's directory whose folders have the names of streamlearn's internal packages."""
    app = tmp_path / "app"
    (app / "state").mkdir(parents=True)  # a folder of snapshots: a namespace package to Python
    (app / "state" / "snapshots").mkdir()
    for name in ("pipeline", "consumers"):  # the application's own packages
        (app / name).mkdir()
        (app / name / "__init__.py").write_text(
            f"raise RuntimeError('the application's {name} was imported')\n"
        )
    return app


def test_an_applications_state_and_pipeline_folders_do_not_shadow_streamlearn(state_dir, tmp_path):
    app = _app_dir(tmp_path)
    argv = [sys.executable, "-c", SCRIPT, str(state_dir), json.dumps(CANDIDATES), json.dumps(FEATURES)]
    done = subprocess.run(argv, cwd=app, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = _reference_scores(state_dir, "ftrl", {**BODY, "model": "ftrl"})
    np.testing.assert_allclose(json.loads(done.stdout), expected, rtol=0, atol=1e-12)


def test_an_application_package_imported_first_is_named_in_the_error(tmp_path):
    app = _app_dir(tmp_path)
    (app / "state" / "__init__.py").write_text("")
    code = "import state\nimport streamlearn\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=app, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "streamlearn uses a package named 'state', but another 'state' is already imported" in done.stderr
    assert str(app / "state" / "__init__.py") in done.stderr


def test_the_package_docstring_example_runs(state_dir):
    example = textwrap.dedent(
        f"""
        import streamlearn
        model = streamlearn.load({str(state_dir)!r})
        scores = model.score("ftrl", user_id="u1", candidates=["i1", "i2"], features={{"device": "ios"}})
        d = model.decide("diag_linucb", user_id="u1", candidates=["i1", "i2", "i3"], k=2)
        assert len(scores) == 2 and len(d.items) == 2 and all(0 < p <= 1 for p in d.propensities)
        assert model.refresh() is False
        """
    )
    exec(compile(example, "<example>", "exec"), {})
