"""The serving API: exploration rules with exact propensities, request checks, and real HTTP over loopback.

``streamlearn serve`` runs as a real process against a state directory a real replay wrote; its
scores are compared with the model loaded the long way (snapshot → runner → featurizer →
predict), its decisions with their logged exposure records, and a hot swap under load must fail
no request and mix no models.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest

from consumers.cli import main
from consumers.serving import ServingOptions, ServingServer
from pipeline.config import config_hash, load_config
from pipeline.events import EventRules
from pipeline.runner import Runner
from pipeline.serving.exploration import ExplorationRule, draw_slate, probabilities
from pipeline.serving.request_events import request_events
from pipeline.serving.requests import RequestError, parse_request
from pipeline.serving.view import ModelVersion, ModelView, ViewHolder
from state.snapshot import SnapshotStore
from tests.kafka.broker import REPO_ROOT, free_port

LEARNERS = ("ftrl", "neural", "diag_linucb", "linear_ts")

# --------------------------------------------------------------------------- exploration rules


@pytest.mark.parametrize(
    ("rule", "scores", "expected"),
    [
        (ExplorationRule("epsilon_greedy", 0.3), [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]),
        (ExplorationRule("softmax", 0.5), [0.0, np.log(3) * 0.5], [0.25, 0.75]),
        # inverse gap weighting: 1 / (m + gamma * gap); the best item takes the rest
        (ExplorationRule("squarecb", 20.0), [0.5, 0.4, 0.3], [1 - 1 / 5 - 1 / 7, 1 / 5, 1 / 7]),
        (ExplorationRule("greedy"), [0.3, 0.3, 0.9], [0.0, 0.0, 1.0]),
    ],
)
def test_rule_probabilities_match_the_hand_computed_formula(rule, scores, expected):
    np.testing.assert_allclose(probabilities(rule, np.array(scores)), expected, rtol=1e-12)


@pytest.mark.parametrize("rule", [ExplorationRule("epsilon_greedy", 0.4), ExplorationRule("softmax", 0.2)])
def test_logged_propensities_are_the_frequencies_of_the_draws(rule):
    scores = np.array([0.1, 0.5, 0.3, 0.45])
    rng = np.random.default_rng(7)
    n = 40_000
    firsts, second_given_first = np.zeros(4), {}
    for _ in range(n):
        items, props = draw_slate(rule, scores, 2, rng)
        firsts[items[0]] += 1
        second_given_first.setdefault(int(items[0]), []).append((int(items[1]), props))
    np.testing.assert_allclose(firsts / n, probabilities(rule, scores), atol=0.01)
    for first, draws in second_given_first.items():
        rest = np.delete(np.arange(4), first)
        expected = dict(zip(rest.tolist(), probabilities(rule, scores[rest])))
        seconds = np.array([d[0] for d in draws])
        for item, p in expected.items():
            assert abs((seconds == item).mean() - p) < 0.03
            logged = {float(d[1][1]) for d in draws if d[0] == item}
            assert logged and all(abs(x - p) < 1e-12 for x in logged)


def test_a_draw_is_the_index_generator_choice_draws_from_the_same_state():
    from pipeline.serving.exploration import draw

    rng = np.random.default_rng(5)
    for seed in range(500):
        m = int(rng.integers(1, 30))
        p = rng.random(m) * (rng.random(m) < 0.7)  # zeros among them: never drawn
        if p.sum() == 0:
            continue
        p = p / p.sum()
        assert draw(p, np.random.default_rng(seed)) == int(np.random.default_rng(seed).choice(p.size, p=p))


def test_rule_parameters_are_checked():
    with pytest.raises(ValueError, match="epsilon must be a number in"):
        ExplorationRule("epsilon_greedy", 1.5)
    with pytest.raises(ValueError, match="unknown exploration rule 'boltzmann'"):
        ExplorationRule("boltzmann")


# --------------------------------------------------------------------------- request checks


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([], "body", "expected a JSON object"),
        ({"user_id": "u", "candidates": ["a"]}, "model", "expected the name"),
        ({"model": "m", "candidates": ["a"]}, "user_id", "non-empty string"),
        ({"model": "m", "user_id": "u", "candidates": []}, "candidates", "non-empty list"),
        ({"model": "m", "user_id": "u", "candidates": ["a", "a"]}, "candidates", "listed twice"),
        (
            {"model": "m", "user_id": "u", "candidates": [{"item": "a"}]},
            "candidates[0].item",
            "unknown field",
        ),
        ({"model": "m", "user_id": "u", "candidates": ["a"], "k": 2}, "k", "in [1, 1]"),
        (
            {"model": "m", "user_id": "u", "candidates": ["a"], "features": {"x": [1]}},
            "features.x",
            "string, number",
        ),
        (
            {"model": "m", "user_id": "u", "candidates": [{"item_id": "a", "features": {"p": float("nan")}}]},
            "candidates[0].features.p",
            "finite number",
        ),
        (
            {"model": "m", "user_id": "u", "candidates": ["a"], "exploration": "softmax"},
            "exploration",
            "only /v1/decide",
        ),
        ({"model": "m", "user_id": "u", "candidates": ["a"], "colour": 1}, "colour", "unknown field"),
    ],
)
def test_bad_requests_name_the_field(body, field, message):
    with pytest.raises(RequestError, match=re.escape(message)) as err:
        parse_request(body)
    assert err.value.field == field


def test_too_many_candidates_is_refused():
    from pipeline.serving.requests import Limits

    with pytest.raises(RequestError, match="more than the limit of 3"):
        parse_request({"model": "m", "user_id": "u", "candidates": list("abcd")}, Limits(max_candidates=3))


# --------------------------------------------------------------------------- a model to serve


def _stream(path: Path, n: int, seed: int) -> Path:
    from pipeline.simulation import SimConfig, Simulator

    sim = Simulator(SimConfig(seed=seed, n_items=60, n_users=300, run_id=f"s{seed}"))
    with path.open("wb") as f:
        for chunk in sim.json_chunks(n, 0.0, False):
            f.write(b"".join(line + b"\n" for line in chunk.lines))
    return path


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    args = ["replay", str(_stream(root / "a.jsonl", 6000, 1)), "--state-dir", str(root / "state")]
    for kind in LEARNERS:
        args += ["--learner", kind]
    assert main([*args, "--dead-letter", str(root / "dlq.jsonl"), "--no-progress"]) == 0
    return root / "state"


def _reference_scores(state: Path, model: str, body: dict) -> np.ndarray:
    """Scores computed the long way: the snapshot's state in a runner of the same configuration."""
    _, bundles = SnapshotStore(state).latest_valid()
    config = load_config(overrides={"learners": list(LEARNERS)}, environ={})
    runner = Runner.from_config(config)
    runner.load_state(bundles)
    req = parse_request(body)
    features = runner.featurizer.transform(request_events(req, req.item_ids, req.item_features))
    learner = next(lr for lr in runner.learners if lr.name == model)
    return learner.predict(features)


def _post(url: str, body, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


BODY = {
    "user_id": "u3",
    "features": {"device": "ios", "hour": 20},
    "candidates": [{"item_id": f"i{j}", "features": {"price": float(j)}} for j in range(12)],
}


class ServeProcess:
    """``streamlearn serve`` as a real process on a free loopback port."""

    def __init__(self, state: Path, log_dir: Path, *extra: str):
        self.port = free_port()
        self.log = (log_dir / f"serve-{self.port}.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "consumers.cli",
            "serve",
            "--state-dir",
            str(state),
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(
            [*cmd, "--poll", "0.2", *extra], cwd=REPO_ROOT, stdout=self.log, stderr=self.log
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/readyz", timeout=1)
                break
            except (urllib.error.URLError, OSError):
                assert self.proc.poll() is None, Path(self.log.name).read_text()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(20)
        self.log.close()
        return code


@pytest.fixture
def serve(state_dir, tmp_path):
    procs = []

    def start(*extra: str, state: Path | None = None) -> ServeProcess:
        procs.append(ServeProcess(state or state_dir, tmp_path, *extra))
        return procs[-1]

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.stop()


@pytest.mark.parametrize("model", ["ftrl", "neural", "diag_linucb"])
def test_replica_scores_equal_the_snapshot_model_loaded_the_long_way(serve, state_dir, model):
    server = serve("--torch-threads", "2") if model == "neural" else serve()  # any thread count
    status, got = _post(server.url + "/v1/score", {**BODY, "model": model})
    assert status == 200, got
    assert [s["item_id"] for s in got["scores"]] == [c["item_id"] for c in BODY["candidates"]]
    expected = _reference_scores(state_dir, model, {**BODY, "model": model})
    np.testing.assert_allclose([s["score"] for s in got["scores"]], expected, rtol=1e-6, atol=1e-9)
    manifest = SnapshotStore(state_dir).latest_valid()[0]
    assert got["version"]["snapshot_seq"] == manifest["seq"]
    assert got["version"]["events_applied"] == manifest["events_applied"]
    assert got["version"]["config_hash"] == manifest["config_hash"]


def test_replica_decides_and_logs_every_decision_with_its_propensity(serve, tmp_path):
    log = tmp_path / "decisions.jsonl"
    server = serve("--decisions", str(log))
    status, models = _get(server.url + "/v1/models")
    assert status == 200 and {m["name"] for m in models["models"]} == set(LEARNERS)
    decisions = []
    for i, (model, extra) in enumerate(
        [
            ("diag_linucb", {}),
            ("linear_ts", {"k": 2}),
            ("neural", {"k": 3, "exploration": {"rule": "softmax", "temperature": 0.05}}),
            ("ftrl", {"exploration": {"rule": "squarecb", "gamma": 50}}),
        ]
    ):
        status, d = _post(server.url + "/v1/decide", {**BODY, "model": model, "request_id": f"r{i}", **extra})
        assert status == 200, d
        assert len(d["items"]) == extra.get("k", 1)
        assert all(0 < it["propensity"] <= 1 for it in d["items"])
        decisions.append(d)
    assert decisions[0]["policy"] == "diag_linucb" and decisions[0]["items"][0]["propensity"] == 1.0
    assert decisions[2]["policy"] == "neural+softmax(temperature=0.05)"
    assert server.stop() == 0
    records = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert len(records) == sum(len(d["items"]) for d in decisions)
    by_id = {(r["decision_id"], r["position"]): r for r in records}
    candidates = [c["item_id"] for c in BODY["candidates"]]
    for d in decisions:
        for it in d["items"]:
            r = by_id[(d["decision_id"], it["slot"])]
            assert r["item_id"] == it["item_id"] and r["propensity"] == it["propensity"]
            assert r["policy"] == d["policy"] and r["candidates"] == candidates
            assert r["event_type"] == "impression" and r["label"] == 0
            assert r["model_version"] == d["version"] and r["request_id"] == d["request_id"]
    # the exposure records are events: they replay as they are
    from pipeline.events import decode_json

    events, dead = decode_json(log.read_bytes().splitlines(), EventRules())
    assert dead == [] and len(events) == len(records)


def test_bad_requests_get_clear_answers_and_never_crash_the_server(serve):
    server = serve()
    url = server.url
    assert _post(url + "/v1/score", None, raw=b"{oops")[0] == 400
    status, body = _post(url + "/v1/score", {**BODY, "model": "ftrl", "k": 0})
    assert status == 400 and body["field"] == "k"
    status, body = _post(url + "/v1/score", {**BODY, "model": "lightgbm"})
    assert status == 404 and "loaded: " in body["error"]
    status, body = _post(url + "/v1/decide", {**BODY, "model": "diag_linucb", "exploration": "softmax"})
    assert status == 400 and "explores with its own rule" in body["error"]
    status, _ = _post(url + "/v1/score", None, raw=b"x" * (2 << 20))
    assert status == 413
    assert _get(url + "/v1/nothing")[0] == 404
    assert _post(url + "/v1/noop", {"x": 1}) == (200, {})  # the transport alone, for benchmarks
    status, got = _post(url + "/v1/score", {**BODY, "model": "ftrl"})
    assert status == 200 and len(got["scores"]) == 12


def test_request_metrics_are_labelled_by_route_never_by_the_raw_path():
    server = ServingServer(ViewHolder(), port=0).start()
    try:
        for i in range(3):
            assert _get(f"{server.url}/v1/made-up-{i}")[0] == 404
        assert _post(server.url + "/v1/score", {**BODY, "model": "ftrl"})[0] == 503  # no model yet
        with urllib.request.urlopen(server.url + "/metrics") as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    assert 'streamlearn_serving_requests_total{code="404",endpoint="other"} 3.0' in text
    assert 'streamlearn_serving_requests_total{code="503",endpoint="score"} 1.0' in text
    assert "made-up" not in text


def test_bearer_token_is_required_when_configured(serve, tmp_path):
    config = tmp_path / "s.toml"
    config.write_text('[serving]\ntoken = "s3cret"\n')
    server = serve("--config", str(config))
    assert _post(server.url + "/v1/score", {**BODY, "model": "ftrl"})[0] == 401
    assert _post(server.url + "/v1/score", {**BODY, "model": "ftrl"}, token="wrong")[0] == 401
    assert _post(server.url + "/v1/score", {**BODY, "model": "ftrl"}, token="s3cret")[0] == 200


def _snapshot_view(state_dir: Path) -> ModelView:
    """The newest snapshot's model as a view, built in this process."""
    manifest, bundles = SnapshotStore(state_dir).latest_valid()
    config = load_config(overrides={"learners": list(LEARNERS)}, environ={})
    runner = Runner.from_config(config)
    version = ModelVersion(config_hash(config), manifest["events_applied"], manifest["seq"], 0, "snapshot")
    return ModelView.from_state(runner.learners, runner.featurizer.spec, bundles, version)


def test_no_request_changes_learned_state(state_dir):
    view = _snapshot_view(state_dir)
    before = {n: _fingerprint(lr.state()) for n, lr in view.learners.items()}
    features_before = view.featurizer.state()
    server = ServingServer(ViewHolder(view), port=0, options=ServingOptions()).start()
    try:
        for model in LEARNERS:
            for k in (1, 3):
                _post(
                    server.url + "/v1/score",
                    {**BODY, "model": model, "candidates": BODY["candidates"][: 3 + k]},
                )
                _post(server.url + "/v1/decide", {**BODY, "model": model, "k": k, "user_id": f"new-{k}"})
    finally:
        server.stop()
    assert {n: _fingerprint(lr.state()) for n, lr in view.learners.items()} == before
    assert view.featurizer.state().equals(features_before)


def _fingerprint(bundle) -> bytes:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(bundle.tables):
        h.update(name.encode())
        for col in bundle.tables[name].columns:
            h.update(str(col.to_pylist()).encode())
    for name in sorted(bundle.arrays):
        h.update(name.encode() + np.ascontiguousarray(bundle.arrays[name]).tobytes())
    for name in sorted(bundle.tensors):
        h.update(name.encode() + bundle.tensors[name].detach().cpu().numpy().tobytes())
    meta = {k: v for k, v in bundle.meta.items() if k != "rng"}  # a decision draws from the view's generator
    h.update(orjson.dumps(meta, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY))
    return h.digest()


def test_hot_swap_under_load_fails_no_request_and_mixes_no_models(serve, state_dir, tmp_path):
    import shutil

    state = tmp_path / "state"
    shutil.copytree(state_dir, state)
    server = serve(state=state)
    body = {**BODY, "model": "ftrl"}
    first = _post(server.url + "/v1/score", body)[1]
    answers, failures, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            status, got = _post(server.url + "/v1/score", body)
            (answers if status == 200 else failures).append(got)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        more = _stream(tmp_path / "b.jsonl", 3000, 2)
        args = ["replay", str(more), "--state-dir", str(state), "--dead-letter", str(tmp_path / "d.jsonl")]
        for kind in LEARNERS:
            args += ["--learner", kind]
        assert main([*args, "--no-progress"]) == 0
        newest = SnapshotStore(state).latest_valid()[0]["seq"]
        deadline = time.monotonic() + 30
        while not any(a["version"]["snapshot_seq"] == newest for a in answers[-20:]):
            assert time.monotonic() < deadline, "the replica did not swap in the new snapshot"
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    by_version: dict[int, set] = {}
    for a in answers:
        by_version.setdefault(a["version"]["snapshot_seq"], set()).add(tuple(s["score"] for s in a["scores"]))
    assert set(by_version) == {first["version"]["snapshot_seq"], newest}
    assert all(len(scores) == 1 for scores in by_version.values()), "one version answered with two models"
    assert by_version[first["version"]["snapshot_seq"]] == {tuple(s["score"] for s in first["scores"])}


def test_concurrent_requests_batched_in_one_model_call_get_their_own_scores(state_dir):
    view = _snapshot_view(state_dir)
    bodies = [
        {**BODY, "model": model, "user_id": f"u{i}", "candidates": BODY["candidates"][: 2 + i % 9]}
        for i in range(48)
        for model in ("ftrl", "neural")
    ]
    expected = [view.score(parse_request(b)) for b in bodies]
    together = view.score_many([parse_request(b) for b in bodies if b["model"] == "ftrl"])
    np.testing.assert_allclose(np.concatenate(together), np.concatenate(expected[::2]), rtol=1e-12)

    server = ServingServer(ViewHolder(view), port=0).start()
    got: dict[int, list[float]] = {}
    try:
        # waves of 16 requests sent on 16 connections before any answer is read: they reach the
        # server together, as concurrent clients' requests do
        conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(16)]
        for wave in range(0, len(bodies), len(conns)):
            sent = list(zip(conns, range(wave, min(wave + len(conns), len(bodies)))))
            for conn, i in sent:
                conn.request(
                    "POST", "/v1/score", orjson.dumps(bodies[i]), {"Content-Type": "application/json"}
                )
            for conn, i in sent:
                resp = conn.getresponse()
                assert resp.status == 200
                got[i] = [s["score"] for s in orjson.loads(resp.read())["scores"]]
        for conn in conns:
            conn.close()
    finally:
        server.stop()
    for i, scores in enumerate(expected):  # the neural ranker computes in float32: batch shapes differ
        np.testing.assert_allclose(got[i], scores, rtol=1e-6)
    assert server.batcher.scored == len(bodies) and server.batcher.calls < len(bodies)


def test_bandit_decisions_batched_together_are_the_decisions_made_alone(state_dir):
    """decide_many scores the first slot of all requests of one size in one [g, m] call: a
    deterministic policy's slates, propensities and scores are those of each request alone."""
    view = _snapshot_view(state_dir)
    bodies = [
        {
            **BODY,
            "model": "diag_linucb",
            "user_id": f"u{i}",
            "features": {"device": ("ios", "web", "android")[i % 3], "hour": i},
            "candidates": BODY["candidates"][i % 5 : 3 + i % 5 + i % 4],
            "k": 1 + i % 3,
        }
        for i in range(24)
    ]
    reqs = [parse_request(b, decide=True) for b in bodies]
    together = view.decide_many(reqs)
    for req, got in zip(reqs, together):
        alone = view.decide_many([req])[0]
        assert (got.items, got.positions) == (alone.items, alone.positions)
        np.testing.assert_allclose(got.propensities, alone.propensities, rtol=1e-12)
        np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-12)
        assert len(got.items) == req.k and len(set(got.items)) == req.k
    # a sampling policy: valid slates with propensities in (0, 1]
    for req, got in zip(
        reqs, view.decide_many([parse_request({**b, "model": "linear_ts"}, decide=True) for b in bodies])
    ):
        assert len(set(got.items)) == req.k and set(got.items) <= set(req.item_ids)
        assert all(0 < p <= 1 for p in got.propensities)


def test_following_updates_of_a_state_dir_without_group_is_refused_by_name(state_dir, capsys):
    assert main(["serve", "--state-dir", str(state_dir), "--follow-updates", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "written without [group]" in err and "without --follow-updates" in err
