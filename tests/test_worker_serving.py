"""The worker serves its live model: decisions over HTTP land in the decision topic; a replica agrees.

The real ``streamlearn worker`` consumes from the real broker with ``--serving-port``; decisions
asked of it over loopback HTTP are found in the decision topic with their propensities, and a
``streamlearn serve`` replica of the worker's state directory answers with the worker's scores once
both hold the same events.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import orjson

from state.snapshot import SnapshotStore
from tests.kafka.broker import free_port
from tests.kafka.workers import read_topic, wait_for, worker_config
from tests.test_conformance import make_events
from tests.test_serving import BODY, ServeProcess, _get, _post

LEARNERS = '[[learners]]\nkind = "ftrl"\nparams = { bits = 16 }\n[[learners]]\nkind = "diag_linucb"\n'


def test_worker_serves_decisions_logged_to_the_decision_topic_and_a_replica_agrees(
    kafka_broker, topic_factory, producer, workers, tmp_path
):
    topic = topic_factory(partitions=2)
    for i, v in enumerate(make_events(3000, prefix="s")):
        producer.send(topic, value=v, partition=i % 2)
    producer.flush()
    state_dir, group = tmp_path / "state", f"g-serve-{time.monotonic_ns()}"
    config = worker_config(
        tmp_path / "w.toml", kafka_broker.bootstrap, [topic], group, state_dir, learners=LEARNERS
    )
    config.write_text(config.read_text() + "[serving]\nrefresh_ms = 200\n")
    port = free_port()
    worker = workers.start("worker", config, "--serving-port", str(port))
    url = f"http://127.0.0.1:{port}"

    def caught_up():
        found = SnapshotStore(state_dir).latest_valid()
        return found is not None and sum(found[0]["positions"].values()) == 3000 and found[0]

    manifest = wait_for(caught_up, "every event applied and snapshotted", timeout=90, procs=[worker])
    wait_for(
        lambda: (
            _get(url + "/v1/models")[1].get("version", {}).get("events_applied") == manifest["events_applied"]
        ),
        "the worker to serve its model after the last batch",
        procs=[worker],
    )

    decisions = []
    for i, (model, extra) in enumerate([("diag_linucb", {"k": 2}), ("ftrl", {"exploration": "softmax"})] * 3):
        status, d = _post(url + "/v1/decide", {**BODY, "model": model, "request_id": f"w{i}", **extra})
        assert status == 200, d
        assert (
            d["version"]["origin"] == "live" and d["version"]["events_applied"] == manifest["events_applied"]
        )
        decisions.append(d)
    status, live = _post(url + "/v1/score", {**BODY, "model": "ftrl"})
    assert status == 200

    # every decision is in the decision topic with its propensity and candidate set
    expected = {
        (d["decision_id"], it["slot"]): (it["item_id"], it["propensity"])
        for d in decisions
        for it in d["items"]
    }

    def logged():
        records = [orjson.loads(r.value) for r in read_topic(kafka_broker.bootstrap, f"{topic}.decisions", 1)]
        return len(records) >= len(expected) and records

    records = wait_for(logged, "the decision records in the decision topic", procs=[worker])
    got = {(r["decision_id"], r["position"]): (r["item_id"], r["propensity"]) for r in records}
    assert got == expected
    assert all(r["candidates"] == [c["item_id"] for c in BODY["candidates"]] for r in records)

    # a replica of the worker's state directory serves the same scores for the same events
    replica = ServeProcess(state_dir, tmp_path)
    try:
        status, served = _post(replica.url + "/v1/score", {**BODY, "model": "ftrl"})
        assert status == 200
        assert served["version"]["events_applied"] == live["version"]["events_applied"]
        np.testing.assert_allclose(
            [s["score"] for s in served["scores"]], [s["score"] for s in live["scores"]], rtol=1e-9
        )
    finally:
        assert replica.stop() == 0
    worker.signal(signal.SIGINT)
    assert worker.wait(40) == 0, worker.log_tail()
