"""The delayed-feedback join in the real worker against the real broker: exposures and outcomes in
different topics and partitions, the worker killed with SIGKILL three times, and every exposure
joined exactly once, every outcome counted once (from the snapshots themselves)."""

from __future__ import annotations

import random
import time

import numpy as np
import orjson
import pytest

from state.snapshot import SnapshotStore
from tests.kafka.workers import committed, wait_for, worker_config
from tests.test_worker_kafka import send

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000  # 2026-01-01, ms


def join_stream(n_requests: int, seed: int = 0):
    """Exposures (3 per request, 100 ms apart) and clicks 0.2-20 s later on about 30% of them."""
    rng = np.random.default_rng(seed)
    exposures, outcomes, clicked = [], [], set()
    for r in range(n_requests):
        ts = T0 + 100 * r
        for k in range(3):
            eid = f"x{r}.{k}"
            item = f"i{(r * 7 + k) % 40}"
            exposures.append(
                {
                    "event_id": eid,
                    "ts": ts,
                    "user_id": f"u{r % 97}",
                    "item_id": item,
                    "label": 0,
                    "event_type": "impression",
                    "request_id": f"r{r}",
                    "features": {"device": ["ios", "web"][k % 2]},
                }
            )
            if rng.random() < 0.3:
                clicked.add(eid)
                outcomes.append(
                    {
                        "event_id": f"c{r}.{k}",
                        "ts": ts + int(rng.uniform(200, 20_000)),
                        "user_id": f"u{r % 97}",
                        "item_id": item,
                        "label": 1,
                        "event_type": "click",
                        "request_id": f"r{r}",
                    }
                )
    outcomes.sort(key=lambda o: o["ts"])
    return [orjson.dumps(e) for e in exposures], [orjson.dumps(o) for o in outcomes], clicked


JOIN = """
[join]
enabled = true
strategy = "fake_negative"
window_s = 60
# far beyond the stream's span: partitions read at any relative speed never close an exposure
# before its outcome arrived; the sentinel exposure at the end closes them all
allowed_lateness_ms = 100_000_000
[[learners]]
kind = "ftrl"
params = { bits = 16 }
[[learners]]
kind = "beta_ts"
params = { reset_on_drift = false }
"""


def test_worker_join_killed_3_times_joins_every_exposure_once(
    kafka_broker, topic_factory, producer, workers, tmp_path
):
    x_topic, o_topic = topic_factory(partitions=3), topic_factory(partitions=2)
    exposures, outcomes, clicked = join_stream(6000)
    send(producer, x_topic, exposures, 3)
    send(producer, o_topic, outcomes, 2)
    state_dir, group = tmp_path / "state", "g-join"
    config = worker_config(
        tmp_path / "w.toml",
        kafka_broker.bootstrap,
        [x_topic, o_topic],
        group,
        state_dir,
        batch_size=300,
        every_events=1500,
        client={"max_partition_fetch_bytes": 16384},
        learners=JOIN,
    )
    rng = random.Random(20261207)

    def progress() -> int:
        got = committed(kafka_broker.bootstrap, group, x_topic, 3)
        return sum(v[0] for v in got.values() if v)

    before = 0
    for i in range(3):
        worker = workers.start(f"killed-{i}", config)
        wait_for(lambda b=before: progress() > b, f"progress in run {i}", procs=[worker])
        time.sleep(rng.uniform(0.0, 0.4))
        worker.kill()
        before = progress()
        assert before < len(exposures), "the worker consumed everything before the kill; use a longer stream"

    final = workers.start("final", config, "--idle-exit", "3")
    assert final.wait(180) == 0, final.log_tail()
    # everything consumed: one exposure far in the future moves the watermark past every window
    # (sent only now: the watermark is one for the stream, docs/delayed_feedback.md)
    sentinel = {
        "event_id": "end",
        "ts": T0 + 10**9,
        "user_id": "u",
        "item_id": "i0",
        "label": 0,
        "event_type": "impression",
        "request_id": "end",
    }
    producer.send(x_topic, value=orjson.dumps(sentinel), partition=0)
    producer.flush()
    closer = workers.start("closer", config, "--idle-exit", "3")
    assert closer.wait(180) == 0, closer.log_tail()

    manifest, bundles = SnapshotStore(state_dir).latest_valid()
    assert manifest["counters"]["duplicates"] == 0
    assert manifest["counters"]["applied"] == len(exposures) + len(outcomes) + 1
    join = bundles["_join"].meta["counters"]
    print(join)
    assert join["exposures"] == len(exposures) + 1
    assert join["outcomes"] == join["attributed"] == len(outcomes)
    assert join["orphans"] == join["after_window"] == join["repeated_exposures"] == join["evicted"] == 0
    assert join["closed"] == len(exposures) and join["positives"] == len(clicked)
    # each learner learned each final example once: the policy's sums say so exactly
    arms = bundles["beta_ts"].tables["arms"].to_pydict()
    assert sum(arms["pulls"]) == len(exposures)
    assert sum(arms["reward_sum"]) == pytest.approx(len(clicked))
    assert manifest_window_seen(bundles, "ftrl") == len(exposures)


def manifest_window_seen(bundles, learner: str) -> int:
    return int(bundles["_runner"].meta["window_seen"][learner])
