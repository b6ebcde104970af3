"""Many workers, one model, against the real broker (issue 17): ``streamlearn worker`` processes with
``[group]`` on, sharing their deltas through the real updates topic.

Three workers on a six-partition topic; one is killed with SIGKILL mid-stream and a fourth joins
with an empty state directory. Everything is checked from the snapshots the workers wrote:

* **exactly once, at every snapshot of every worker**: the group-wide counts in ``_group`` say
  that each partition's records up to its frontier were read once, and the Beta-TS pulls in the
  same snapshot (one per applied event) equal the applied count: no event's effect is missing or
  doubled anywhere, the killed worker's snapshots included;
* **one model**: every surviving worker's final Diag-LinUCB and Beta-TS state equals one runner's
  over the same events, to float tolerance;
* **a joining worker starts warm**: it loads the newest peer snapshot, not an empty model;
* **a serving replica follows the topic**: ``streamlearn serve --follow-updates``, started from an
  early snapshot, ends with the group's whole model (every valid event, the topic's last offset)
  and answers with the scores of the workers' final snapshot.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from consumers.worker.group import group_meta
from pipeline.config import load_config
from pipeline.runner import RawBatch, Runner
from pipeline.serving.request_events import request_events
from pipeline.serving.requests import parse_request
from state.snapshot import SnapshotStore
from tests.kafka.workers import end_offsets, wait_for, worker_config
from tests.test_group import assert_sum_state_equal
from tests.test_serving import BODY, ServeProcess, _post
from tests.test_worker_kafka import INVALID, mixed_stream, send

pytestmark = pytest.mark.slow

PARTITIONS = 6
LEARNERS = """
[[learners]]
kind = "diag_linucb"
params = { reset_on_drift = false }
[[learners]]
kind = "beta_ts"
params = { reset_on_drift = false }
[[learners]]
kind = "ftrl"
params = { bits = 16 }
[features]
standardize = false
"""


def group_config(tmp_path: Path, name: str, bootstrap: str, topic: str, dirs: list[Path]) -> Path:
    learners = LEARNERS + (
        "[group]\nenabled = true\npublish_every_ms = 200\n"
        f"bootstrap_dirs = {json.dumps([str(d) for d in dirs])}\n"
    )
    return worker_config(
        tmp_path / f"{name}.toml",
        bootstrap,
        [topic],
        f"g-{topic}",
        tmp_path / name,
        batch_size=300,
        every_events=1500,
        every_seconds=0.5,
        learners=learners,
    )


def newest_group_state(state_dir: Path) -> dict | None:
    store = SnapshotStore(state_dir)
    for seq in reversed(store.seqs()):
        try:
            return group_meta(store.read_manifest(seq))
        except Exception:
            continue
    return None


def frontier_total(state_dir: Path) -> int:
    meta = newest_group_state(state_dir)
    return sum(meta["frontier"].values()) if meta else 0


def check_every_snapshot(state_dir: Path, topic: str, by_partition: dict[int, list[bytes]]) -> int:
    """Each snapshot: records read once up to every frontier, and one Beta-TS pull per applied event."""
    store = SnapshotStore(state_dir)
    checked = 0
    for seq in store.seqs():
        manifest, bundles = store.read(seq)
        meta = group_meta(manifest)
        assert meta is not None, f"{state_dir} snapshot {seq} has no _group bundle"
        applied = 0
        for key, end in meta["frontier"].items():
            p = int(key.rsplit(":", 1)[1])
            counts = meta["counts"].get(key, {})
            assert counts.get("records", 0) == end, f"{state_dir.name}#{seq}: {key} read {counts} up to {end}"
            valid = sum(1 for v in by_partition[p][:end] if v not in INVALID)
            assert counts.get("applied", 0) == valid, (
                f"{state_dir.name}#{seq}: {key} applied {counts}, {valid} valid"
            )
            assert counts.get("duplicates", 0) == 0
            applied += counts["applied"]
        pulls = bundles["beta_ts"].tables["arms"].column("pulls").to_numpy().sum()
        assert pulls == applied, f"{state_dir.name}#{seq}: {pulls} pulls for {applied} applied events"
        checked += 1
    return checked


def test_three_workers_kill_one_and_a_new_one_joins_one_model_exactly_once(
    kafka_broker, topic_factory, producer, workers, tmp_path, request
):
    topic = topic_factory(partitions=PARTITIONS)
    bootstrap = kafka_broker.bootstrap
    names = ["w0", "w1", "w2", "w3"]
    dirs = [tmp_path / n for n in names]
    configs = {n: group_config(tmp_path, n, bootstrap, topic, dirs) for n in names}
    first = mixed_stream(24_000, every=500, prefix="a", seed=1)
    second = mixed_stream(30_000, every=500, prefix="b", seed=2)
    by_partition = send(producer, topic, first, PARTITIONS)

    procs = {n: workers.start(n, configs[n]) for n in names[:3]}
    wait_for(lambda: frontier_total(dirs[1]) > 0, "w1's first group snapshot", procs=procs.values())
    wait_for(
        lambda: all(frontier_total(d) > 0 for d in dirs[:3]),
        "a snapshot of every worker",
        procs=procs.values(),
    )
    replica = ServeProcess(
        dirs[0], tmp_path, "--follow-updates", "--config", str(configs["w0"]), "--bootstrap", bootstrap
    )
    request.addfinalizer(lambda: replica.proc.poll() is None and replica.proc.kill())
    status, early = _post(replica.url + "/v1/score", {**BODY, "model": "ftrl"})
    assert status == 200, early
    time.sleep(random.Random(17).uniform(0.2, 1.0))
    procs["w1"].kill()  # mid-stream: its last deltas may or may not be in the topic
    procs["w3"] = workers.start("w3", configs["w3"])
    wait_for(
        lambda: "assigned ['" in procs["w3"].log.read_text(errors="replace"),
        "partitions for the joining worker",
        timeout=60,
        procs=[procs["w3"]],
    )
    for p, values in send(producer, topic, second, PARTITIONS).items():
        by_partition[p] += values

    ends = end_offsets(bootstrap, topic, PARTITIONS)
    total = sum(ends.values())
    alive = [n for n in names if n != "w1"]
    wait_for(
        lambda: all(frontier_total(tmp_path / n) == total for n in alive),
        "every live worker's snapshot at the topic's end",
        timeout=150,
        procs=[procs[n] for n in alive],
    )
    for n in alive:
        procs[n].signal(signal.SIGTERM)
    for n in alive:
        assert procs[n].wait(60) == 0, procs[n].log_tail()

    # exactly once at every snapshot of every worker, the killed one's included
    assert all(check_every_snapshot(d, topic, by_partition) > 0 for d in dirs)

    # one model: each live worker's sums equal one runner's over every valid event
    cfg = load_config(configs["w0"])
    valid = [v for values in by_partition.values() for v in values if v not in INVALID]
    one = Runner.from_config(cfg)
    for i in range(0, len(valid), 1000):
        one.process(RawBatch(values=valid[i : i + 1000], positions={"all": i + 1000}))
    for n in alive:
        runner = Runner.from_config(cfg)
        runner.load_state(SnapshotStore(tmp_path / n).latest_valid()[1])
        assert_sum_state_equal(runner, one, only=("diag_linucb/", "beta_ts/"))

    # the joiner started from a peer's snapshot, and the group's frontier covers every partition
    joined = procs["w3"].report()["extra"]["group"]
    assert joined["bootstrapped_from"] is not None, procs["w3"].log_tail()
    assert joined["frontier"] == {f"{topic}:{p}": ends[p] for p in range(PARTITIONS)}
    outcomes = [procs[n].report()["extra"]["group"]["outcomes"] for n in alive]
    assert all(o.get("accepted", 0) > 0 and o.get("own", 0) > 0 for o in outcomes), outcomes

    # the replica followed the topic from its early snapshot to the group's whole model
    last = end_offsets(bootstrap, f"{topic}.updates", 1)[0]

    def replica_version(model: str) -> dict:
        status, got = _post(replica.url + "/v1/score", {**BODY, "model": model})
        assert status == 200, got
        return got

    wait_for(
        lambda: replica_version("ftrl")["version"]["updates_offset"] == last, "the replica at the topic's end"
    )
    assert early["version"]["updates_offset"] < last
    _, bundles = SnapshotStore(dirs[0]).latest_valid()
    final = Runner.from_config(cfg)
    final.load_state(bundles)
    req = parse_request({**BODY, "model": "ftrl"})
    features = final.featurizer.transform(request_events(req, req.item_ids, req.item_features))
    for learner in final.learners:
        got = replica_version(learner.name)
        assert got["version"]["events_applied"] == len(valid)
        assert got["version"]["origin"] == "updates"
        np.testing.assert_allclose(
            [s["score"] for s in got["scores"]], learner.predict(features), rtol=1e-6, atol=1e-9
        )
    assert replica.stop() == 0
