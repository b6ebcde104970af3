"""``streamlearn replay`` with ``[join]``: the issue's three failure modes of learning exposures and
outcomes as separate records, fixed; and a stopped replay resumes with every exposure joined once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_767_225_600_000


def delayed_log(n_requests: int = 1500, seed: int = 3, reuse_ids: bool = False) -> tuple[list[dict], int]:
    """Impressions (label 0, with features) and clicks 1-60 s later without features, in time order.

    Items ``i0``..``i9`` have click rates from 5% to 50%, so a model can learn something real.
    """
    rng = np.random.default_rng(seed)
    rows, clicks = [], 0
    for r in range(n_requests):
        ts = T0 + 1000 * r
        for k, item in enumerate(rng.choice(10, size=3, replace=False).tolist()):
            eid = f"x{r}.{k}"
            rows.append(
                {
                    "event_id": eid,
                    "ts": ts,
                    "user_id": f"u{r % 50}",
                    "item_id": f"i{item}",
                    "label": 0,
                    "event_type": "impression",
                    "request_id": f"r{r}",
                    "features": {"slot": str(k)},
                }
            )
            if rng.random() < 0.05 + 0.05 * item:
                clicks += 1
                rows.append(
                    {
                        "event_id": eid if reuse_ids else f"c{r}.{k}",
                        "ts": ts + int(rng.uniform(1, 60) * 1000),
                        "user_id": f"u{r % 50}",
                        "item_id": f"i{item}",
                        "label": 1,
                        "event_type": "click",
                        "request_id": f"r{r}",
                    }
                )
    rows.sort(key=lambda x: x["ts"])
    return rows, clicks


JOIN = """
[source]
batch_size = 200
[snapshot]
every_seconds = 0
[join]
enabled = true
strategy = "{strategy}"
window_s = 120
allowed_lateness_ms = 1000
[[learners]]
kind = "ftrl"
params = {{ bits = 16 }}
"""
PLAIN = """
[source]
batch_size = 200
[[learners]]
kind = "ftrl"
params = { bits = 16 }
"""


def replay(tmp_path: Path, rows: list[dict], config: str, *extra: str, name: str = "run") -> dict:
    log = tmp_path / "log.jsonl"
    if not log.exists():
        log.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    (tmp_path / f"{name}.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    env["PYTHONPATH"] = str(ROOT)
    summary = tmp_path / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "consumers.cli",
        "replay",
        str(log),
        "--config",
        str(tmp_path / f"{name}.toml"),
    ]
    cmd += [
        "--no-progress",
        "--summary-json",
        str(summary),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        *extra,
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(summary.read_text())


def test_clicks_without_features_leak_the_label_unless_joined(tmp_path):
    rows, clicks = delayed_log(n_requests=4000)
    plain = replay(tmp_path, rows, PLAIN, name="plain")
    # without the join the clicks are examples of their own: the model is scored on them
    assert plain["learners"]["ftrl"]["n"] == 10_000 and plain["applied"] == 12_000 + clicks
    joined = replay(tmp_path, rows, JOIN.format(strategy="fake_negative"), name="joined")
    join = joined["join"]
    assert join["attributed"] == clicks and join["orphans"] == join["after_window"] == 0
    assert join["exposures"] == 12_000 and joined["duplicates"] == 0
    # scored on exposures only, against their joined labels: the log with labels on its impressions
    clicked = {(r["request_id"], r["item_id"]) for r in rows if r["event_type"] == "click"}
    labelled = [
        dict(r, label=float((r["request_id"], r["item_id"]) in clicked))
        for r in rows
        if r["event_type"] == "impression"
    ]
    (tmp_path / "log.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in labelled) + b"\n")
    oracle = replay(tmp_path, labelled, PLAIN, name="oracle")["learners"]["ftrl"]
    scored = joined["learners"]["ftrl"]
    assert scored["auc"] == pytest.approx(oracle["auc"], abs=0.02)
    assert scored["calibration"] == pytest.approx(oracle["calibration"], abs=0.1), (scored, oracle)


def test_clicks_that_reuse_the_exposure_id_are_not_deduplicated_away(tmp_path):
    rows, clicks = delayed_log(reuse_ids=True)
    plain = replay(tmp_path, rows, PLAIN, name="plain")
    assert plain["duplicates"] == clicks  # without the join every click is dropped as a repeat
    joined = replay(tmp_path, rows, JOIN.format(strategy="wait"), name="joined")
    assert joined["duplicates"] == 0 and joined["join"]["attributed"] == clicks


def test_outcomes_that_name_their_exposure_by_id_join_as_by_request_and_item(tmp_path):
    rows, clicks = delayed_log(n_requests=1500)
    by_request = replay(tmp_path, rows, JOIN.format(strategy="fake_negative"), name="by_request")
    # the clicks say which exposure they follow, and nothing else links them
    exposure_of = {
        (r["request_id"], r["item_id"]): r["event_id"] for r in rows if r["event_type"] == "impression"
    }
    named = [
        {k: v for k, v in r.items() if k != "request_id"}
        | {"exposure_id": exposure_of[r["request_id"], r["item_id"]]}
        if r["event_type"] == "click"
        else r
        for r in rows
    ]
    by_id_dir = tmp_path / "by_id"
    by_id_dir.mkdir()
    config = JOIN.format(strategy="fake_negative").replace(
        "enabled = true", 'enabled = true\nlink = "exposure_id"'
    )
    by_id = replay(by_id_dir, named, config, name="by_id")
    assert by_id["join"]["attributed"] == clicks and by_id["join"]["unlinkable"] == 0
    assert by_id["learners"]["ftrl"] == by_request["learners"]["ftrl"]
    # under the default link the same clicks link to nothing
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    unlinked = replay(plain_dir, named, JOIN.format(strategy="fake_negative"), name="unlinked")
    assert unlinked["join"]["attributed"] == 0 and unlinked["join"]["unlinkable"] == clicks


@pytest.mark.parametrize("strategy", ["wait", "es_dfm"])
def test_a_stopped_replay_resumes_with_every_exposure_joined_once(tmp_path, strategy):
    rows, _ = delayed_log(n_requests=1200)
    config = JOIN.format(strategy=strategy) + "\n"
    straight = replay(tmp_path, rows, config, "--state-dir", str(tmp_path / "a"), name="straight")
    first = replay(
        tmp_path, rows, config, "--state-dir", str(tmp_path / "b"), "--limit", "1700", name="first"
    )
    assert first["join"]["exposures"] < straight["join"]["exposures"]
    resumed = replay(tmp_path, rows, config, "--state-dir", str(tmp_path / "b"), name="resumed")
    assert resumed["join"] == straight["join"]
    assert resumed["applied"] == straight["applied"] and resumed["duplicates"] == 0
    assert resumed["learners"]["ftrl"] == pytest.approx(straight["learners"]["ftrl"])
