"""The worker's exactly-once effect under failure, against the real broker (issue 4, item 7 b–d).

* kill -9 at random moments, restart each time: every event applied once per partition, and a
  single-partition run ends in exactly the state (and predictions) of an uninterrupted run;
* two workers in one group, one killed: the other takes its partitions over, nothing lost or doubled;
* the broker away at start and mid-run: the worker waits, says not ready, and finishes with nothing lost.

"Applied per partition" comes from the snapshots themselves (bundle ``_worker``), so it is exactly
what a restarted worker would hold; the runner's deduplicator would hide a double application as a
duplicate, so every check also requires zero duplicates.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from consumers.worker import TrackedRunner, partition_counts
from consumers.worker.offsets import parse_metadata
from pipeline.config import config_hash, load_config
from pipeline.events import decode_json
from pipeline.runner import RawBatch, Runner
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore
from tests.kafka.workers import committed, end_offsets, http_get, wait_for, worker_config
from tests.test_conformance import assert_bundles_equal, make_events
from tests.test_worker_kafka import INVALID, drained, final_manifest, mixed_stream, send

pytestmark = pytest.mark.slow


def valid_prefix(values: list[bytes]) -> np.ndarray:
    """``out[k]``: how many valid events are among the first ``k`` records."""
    valid = np.fromiter((v not in INVALID for v in values), dtype=np.int64, count=len(values))
    return np.concatenate([[0], np.cumsum(valid)])


def check_every_snapshot(state_dir: Path, topic: str, prefixes: dict[int, np.ndarray]) -> int:
    """Each snapshot's per-partition applied count equals the valid events before its position."""
    store = SnapshotStore(state_dir)
    for seq in store.seqs():
        manifest = store.read_manifest(seq)
        counts = partition_counts(manifest)
        assert manifest["counters"]["duplicates"] == 0, f"snapshot {seq} re-applied events"
        for p, prefix in prefixes.items():
            key = f"{topic}:{p}"
            position = manifest["positions"].get(key, 0)
            applied = counts.get(key, {}).get("applied", 0)
            assert applied == prefix[position], f"snapshot {seq}: {key} at {position} holds {applied} events"
    return len(store.seqs())


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    return sum(v[0] for v in committed(bootstrap, group, topic, partitions).values() if v)


def kill_three_times(workers, bootstrap, topic, partitions, group, config, state_dir, prefixes, total):
    """Start, let it commit progress, SIGKILL after a random delay; three times.

    Returns the committed totals at each kill and the committed offsets at the last one.
    """
    rng = random.Random(20261124)
    points = []
    for i in range(3):
        worker = workers.start(f"killed-{i}", config)
        before = points[-1] if points else 0
        wait_for(
            lambda b=before: committed_total(bootstrap, group, topic, partitions) > b,
            f"progress in run {i}",
            procs=[worker],
        )
        time.sleep(rng.uniform(0.0, 0.5))
        worker.kill()
        reached = committed(bootstrap, group, topic, partitions)
        points.append(sum(v[0] for v in reached.values() if v))
        assert points[-1] < total, f"run {i} consumed everything before the kill; use a longer stream"
        check_every_snapshot(state_dir, topic, prefixes)
    return points, reached


# --------------------------------------------------------------------------- 7b


def test_worker_killed_3_times_single_partition_ends_in_uninterrupted_state(
    kafka_broker, topic_factory, producer, workers, tmp_path
):
    topic = topic_factory(partitions=1)
    values = mixed_stream(45_000, every=1500, prefix="k")
    send(producer, topic, values, 1)
    prefixes = {0: valid_prefix(values)}
    total = len(values)

    straight_dir = tmp_path / "straight"
    straight_cfg = worker_config(
        tmp_path / "straight.toml",
        kafka_broker.bootstrap,
        [topic],
        "g-straight",
        straight_dir,
        every_events=3000,
    )
    straight = workers.start("straight", straight_cfg, "--idle-exit", "2")
    assert straight.wait(120) == 0, straight.log_tail()

    killed_dir, group = tmp_path / "killed", "g-killed"
    killed_cfg = worker_config(
        tmp_path / "killed.toml", kafka_broker.bootstrap, [topic], group, killed_dir, every_events=3000
    )
    points, _ = kill_three_times(
        workers, kafka_broker.bootstrap, topic, 1, group, killed_cfg, killed_dir, prefixes, total
    )
    final = workers.start("final", killed_cfg, "--idle-exit", "2")
    assert final.wait(120) == 0, final.log_tail()
    assert check_every_snapshot(killed_dir, topic, prefixes) >= 1

    (m_straight, b_straight), (m_killed, b_killed) = (
        SnapshotStore(straight_dir).latest_valid(),
        SnapshotStore(killed_dir).latest_valid(),
    )
    assert m_killed["positions"] == m_straight["positions"] == {f"{topic}:0": total}, points
    assert m_killed["counters"] == m_straight["counters"]
    assert m_killed["counters"]["applied"] == 45_000 and m_killed["counters"]["duplicates"] == 0
    assert partition_counts(m_killed) == partition_counts(m_straight)
    b_straight.pop("_worker"), b_killed.pop("_worker")  # worker ids differ, counts compared above
    assert_bundles_equal(b_killed, b_straight)

    held_out = make_events(500, seed=99, prefix="held-out")
    predictions = []
    for bundles in (b_straight, b_killed):
        runner = Runner.from_config(load_config(straight_cfg))
        runner.load_state(bundles)
        events, dead = decode_json(held_out, runner.rules)
        assert not dead
        features = runner.featurizer.transform(events)
        predictions.append({lr.name: lr.predict(features) for lr in runner.learners})
    for name, p in predictions[0].items():
        np.testing.assert_array_equal(p, predictions[1][name], strict=True)


def test_worker_killed_3_times_three_partitions_applies_each_event_once(
    kafka_broker, topic_factory, producer, workers, tmp_path
):
    topic = topic_factory(partitions=3)
    values = mixed_stream(45_000, every=1000, prefix="m")
    by_partition = send(producer, topic, values, 3)
    prefixes = {p: valid_prefix(v) for p, v in by_partition.items()}
    state_dir, group = tmp_path / "state", "g-multi"
    # small fetches interleave the partitions, so that the kills catch several of them midway
    config = worker_config(
        tmp_path / "w.toml",
        kafka_broker.bootstrap,
        [topic],
        group,
        state_dir,
        every_events=3000,
        client={"max_partition_fetch_bytes": 32768},
    )
    _, last = kill_three_times(
        workers, kafka_broker.bootstrap, topic, 3, group, config, state_dir, prefixes, len(values)
    )
    per_partition = len(values) // 3
    assert sum(1 for v in last.values() if v and 0 < v[0] < per_partition) >= 2, last
    final = workers.start("final", config, "--idle-exit", "2")
    assert final.wait(120) == 0, final.log_tail()

    manifest = final_manifest(state_dir)
    counts = partition_counts(manifest)
    ends = end_offsets(kafka_broker.bootstrap, topic, 3)
    assert manifest["positions"] == {f"{topic}:{p}": ends[p] for p in range(3)}
    assert {p: counts[f"{topic}:{p}"]["applied"] for p in range(3)} == {
        p: int(prefixes[p][-1]) for p in range(3)
    }
    assert manifest["counters"]["applied"] == 45_000 and manifest["counters"]["duplicates"] == 0
    check_every_snapshot(state_dir, topic, prefixes)


# --------------------------------------------------------------------------- 7c


def _paced_producer(bootstrap_producer, topic, values, partitions, rate: float) -> threading.Thread:
    def run():
        started = time.monotonic()
        for j, value in enumerate(values):
            bootstrap_producer.send(topic, value=value, partition=j % partitions)
            if j % 200 == 0:
                time.sleep(max(0.0, j / rate - (time.monotonic() - started)))
        bootstrap_producer.flush()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def worker_id(state_dir: Path) -> str | None:
    try:
        return json.loads((state_dir / "worker.json").read_text())["worker_id"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def test_two_workers_one_killed_the_other_takes_over_without_loss_or_double(
    kafka_broker, topic_factory, producer, workers, tmp_path
):
    topic = topic_factory(partitions=4)
    values = mixed_stream(30_000, every=1000, prefix="c")
    by_partition = {p: values[p::4] for p in range(4)}
    valid = {p: sum(v not in INVALID for v in vs) for p, vs in by_partition.items()}
    group = "g-pair"
    dirs = {name: tmp_path / name for name in ("a", "b")}
    configs = {
        name: worker_config(tmp_path / f"{name}.toml", kafka_broker.bootstrap, [topic], group, d)
        for name, d in dirs.items()
    }
    sending = _paced_producer(producer, topic, values, 4, rate=4000.0)
    a = workers.start("a", configs["a"])
    b = workers.start("b", configs["b"])
    ids = wait_for(
        lambda: all(worker_id(d) for d in dirs.values()) and {n: worker_id(d) for n, d in dirs.items()}, "ids"
    )

    def owners():
        return {
            parse_metadata(v[1])[0].worker
            for v in committed(kafka_broker.bootstrap, group, topic, 4).values()
            if v
        }

    wait_for(lambda: owners() == set(ids.values()), "both workers committing their partitions", procs=[a, b])
    assert sending.is_alive(), "the stream ended before the kill; slow the producer down"
    a.kill()

    sending.join(60)
    wait_for(
        drained(kafka_broker.bootstrap, group, topic, 4), "b to drain all partitions", timeout=90, procs=[b]
    )
    assert owners() == {ids["b"]}
    b.signal(signal.SIGTERM)
    assert b.wait(40) == 0, b.log_tail()
    a_again = workers.start("a-again", configs["a"], "--idle-exit", "3")
    assert a_again.wait(90) == 0, a_again.log_tail()

    total = {p: 0 for p in range(4)}
    for name in ("a", "b"):
        manifest = final_manifest(dirs[name])
        assert manifest["counters"]["duplicates"] == 0, name
        for key, c in partition_counts(manifest).items():
            total[int(key.rsplit(":", 1)[1])] += c["applied"]
    assert total == valid
    taken_over = partition_counts(final_manifest(dirs["b"]))
    assert len(taken_over) == 4, "b processed all four partitions after the kill"


# --------------------------------------------------------------------------- 7d


def test_worker_survives_broker_outage_at_start_and_mid_run_without_loss(
    kafka_broker, topic_factory, workers, tmp_path
):
    topic = topic_factory(partitions=2)
    first, second = mixed_stream(5000, every=500, prefix="o1"), mixed_stream(5000, every=500, prefix="o2")
    with kafka_broker.producer() as prod:
        send(prod, topic, first, 2)
    state_dir, group = tmp_path / "state", "g-outage"
    config = worker_config(tmp_path / "w.toml", kafka_broker.bootstrap, [topic], group, state_dir)

    kafka_broker.stop()
    worker = workers.start("worker", config)

    def not_ready():
        status, body = http_get(worker.url("/readyz"))
        return status == 503 and "broker unreachable" in body

    wait_for(not_ready, "/readyz to report the broker unreachable", procs=[worker])
    assert http_get(worker.url("/healthz"))[0] == 200
    kafka_broker.start()
    wait_for(drained(kafka_broker.bootstrap, group, topic, 2), "the first half", timeout=90, procs=[worker])
    wait_for(lambda: http_get(worker.url("/readyz"))[0] == 200, "readiness", procs=[worker])

    kafka_broker.stop()
    wait_for(not_ready, "/readyz to notice the broker is gone", procs=[worker])
    time.sleep(1.0)
    assert worker.poll() is None and http_get(worker.url("/healthz"))[0] == 200
    kafka_broker.start()
    with kafka_broker.producer() as prod:
        send(prod, topic, second, 2)
    wait_for(drained(kafka_broker.bootstrap, group, topic, 2), "the second half", timeout=120, procs=[worker])
    worker.signal(signal.SIGTERM)
    assert worker.wait(40) == 0, worker.log_tail()

    manifest = final_manifest(state_dir)
    assert manifest["counters"]["applied"] == 10_000 and manifest["counters"]["duplicates"] == 0
    assert manifest["counters"]["dead_letters"] == 20
    ends = end_offsets(kafka_broker.bootstrap, topic, 2)
    assert (
        manifest["positions"]
        == {f"{topic}:{p}": ends[p] for p in (0, 1)}
        == {f"{topic}:{p}": 5010 for p in (0, 1)}
    )


# --------------------------------------------------------------------------- the commit protocol


def test_restart_after_takeover_drops_uncommitted_snapshot_and_finds_committed_one_in_kafka(
    kafka_broker, topic_factory, producer, workers, tmp_path
):
    topic = topic_factory(partitions=2)
    by_partition = send(producer, topic, make_events(40_000, prefix="p"), 2)
    group = "g-provenance"
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_cfg = worker_config(
        tmp_path / "a.toml", kafka_broker.bootstrap, [topic], group, a_dir, every_events=1000
    )
    b_cfg = worker_config(tmp_path / "b.toml", kafka_broker.bootstrap, [topic], group, b_dir)

    a = workers.start("a", a_cfg)
    wait_for(
        lambda: all(v and v[0] > 0 for v in committed(kafka_broker.bootstrap, group, topic, 2).values()),
        "a to commit on both partitions",
        procs=[a],
    )
    a.signal(signal.SIGTERM)
    assert a.wait(40) == 0, a.log_tail()
    store = SnapshotStore(a_dir)
    k = store.seqs()[-1]
    assert k >= 2

    # a crash between writing snapshot k+1 and committing it: the snapshot exists, Kafka never heard of it
    config = load_config(a_cfg)
    with Checkpointer(store, config_hash(config), background=False, catalog=False) as ckpt:
        tracked = TrackedRunner(Runner.from_config(config), worker_id(a_dir))
        ckpt.restore(tracked)
        key = f"{topic}:0"
        pos = tracked.positions[key]
        tracked.process_partition(
            key, RawBatch(values=by_partition[0][pos : pos + 500], positions={key: pos + 500})
        )
        assert ckpt.snapshot(tracked, block=True)
    assert store.seqs()[-1] == k + 1
    # and a crash between committing snapshot k and recording that in the ledger
    ledger = json.loads((a_dir / "worker.json").read_text())
    (a_dir / "worker.json").write_text(json.dumps({**ledger, "confirmed_seq": k - 1}))

    b = workers.start("b", b_cfg)  # takes every partition over from the offsets a committed
    wait_for(drained(kafka_broker.bootstrap, group, topic, 2), "b to drain the topic", timeout=90, procs=[b])
    b.signal(signal.SIGTERM)
    assert b.wait(40) == 0, b.log_tail()

    a_again = workers.start("a-again", a_cfg, "--idle-exit", "2")
    assert a_again.wait(90) == 0, a_again.log_tail()
    log = a_again.log.read_text()
    assert f"removed snapshot(s) {k + 1:08d}" in log and f"resumed from snapshot {k} " in log
    assert final_manifest(a_dir)["seq"] == k

    total = {0: 0, 1: 0}
    for d in (a_dir, b_dir):
        manifest = final_manifest(d)
        assert manifest["counters"]["duplicates"] == 0
        for key, c in partition_counts(manifest).items():
            total[int(key.rsplit(":", 1)[1])] += c["applied"]
    assert total == {p: len(v) for p, v in by_partition.items()}
