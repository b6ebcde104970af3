"""The worker's parts that need no broker: offset-aligned batching, the commit protocol's rules,
client settings, per-partition counters in snapshots, configuration checks, and a worker whose
broker never answers."""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import pytest

from consumers.commands import simulate as simulate_cmd
from consumers.kafka import consumer_settings, producer_settings
from consumers.worker import OffsetBatcher, TrackedRunner, Worker, WorkerOptions, partition_counts
from consumers.worker.offsets import (
    MAX_TOKENS,
    Ledger,
    Token,
    abort_after,
    confirmed_seq,
    format_metadata,
    next_chain,
    parse_metadata,
    start_position,
)
from pipeline.config import config_hash, load_config
from pipeline.errors import ConfigError
from pipeline.learners.base import StateBundle
from pipeline.runner import RawBatch, Runner
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore
from tests.kafka.broker import free_port
from tests.test_conformance import make_events

# --------------------------------------------------------------------------- batcher


def _cut_all(batcher: OffsetBatcher, caught_up=False, now=0.0):
    return [(c.key, c.offsets.tolist(), c.end) for c in batcher.pop_ready(lambda k: caught_up, now=now)]


@pytest.mark.parametrize("seed", range(5))
def test_batcher_any_split_of_polls_gives_the_same_aligned_batches(seed):
    rng = np.random.default_rng(seed)
    start, stop, size = 37, 1000, 64
    offsets = np.arange(start, stop)
    bounds = np.sort(rng.choice(np.arange(1, len(offsets)), size=12, replace=False))
    batcher = OffsetBatcher(batch_size=size, max_wait_ms=10_000)
    cuts = []
    for chunk in np.split(offsets, bounds):
        batcher.add("t:0", [b"v"] * len(chunk), chunk, chunk * 10, now=0.0)
        cuts += _cut_all(batcher)
    ends = [c[2] for c in cuts]
    assert ends == list(range(64, 1000 // 64 * 64 + 1, 64))
    assert cuts[0][1] == list(range(37, 64))
    assert all(c[1] == list(range(e - size, e)) for c in cuts[1:] for e in [c[2]])
    assert batcher.buffered("t:0") == stop - ends[-1]


def test_batcher_partial_block_waits_for_caught_up_and_max_wait():
    clock = [0.0]
    batcher = OffsetBatcher(batch_size=100, max_wait_ms=200, clock=lambda: clock[0])
    batcher.add("t:1", [b"a"] * 5, np.arange(5), np.zeros(5, np.int64))
    assert _cut_all(batcher, caught_up=True, now=0.1) == []  # not waited long enough
    assert _cut_all(batcher, caught_up=False, now=0.5) == []  # more may be on its way
    assert batcher.next_due(now=0.1) == pytest.approx(0.1)
    assert _cut_all(batcher, caught_up=True, now=0.2) == [("t:1", [0, 1, 2, 3, 4], 5)]
    assert batcher.next_due() is None


def test_batcher_realigns_to_batch_boundaries_after_a_partial_batch():
    batcher = OffsetBatcher(batch_size=10, max_wait_ms=0)
    batcher.add("t:0", [b"a"] * 3, np.arange(3), np.zeros(3, np.int64), now=0.0)
    assert _cut_all(batcher, caught_up=True) == [("t:0", [0, 1, 2], 3)]
    batcher.add("t:0", [b"a"] * 20, np.arange(3, 23), np.zeros(20, np.int64), now=0.0)
    assert [c[2] for c in _cut_all(batcher)] == [10, 20]


def test_batcher_gap_in_offsets_is_cut_at_the_block_end():
    batcher = OffsetBatcher(batch_size=4, max_wait_ms=0)
    batcher.add("t:0", [b"a"] * 3, np.array([0, 1, 2]), np.zeros(3, np.int64), now=0.0)
    assert _cut_all(batcher) == []  # offset 3 may still come
    batcher.add("t:0", [b"a"] * 2, np.array([5, 6]), np.zeros(2, np.int64), now=0.0)  # 3, 4: markers
    assert _cut_all(batcher) == [("t:0", [0, 1, 2], 4)]
    assert batcher.buffered() == 2


def test_batcher_keeps_partitions_apart_and_drop_forgets_one():
    batcher = OffsetBatcher(batch_size=2, max_wait_ms=0)
    batcher.add("a:0", [b"x", b"y"], np.array([0, 1]), np.zeros(2, np.int64), now=0.0)
    batcher.add("a:1", [b"z"], np.array([4]), np.zeros(1, np.int64), now=0.0)
    assert batcher.drop(["a:1", "nope:3"]) == 1
    assert batcher.keys() == ["a:0"]
    ((key, offsets, end),) = _cut_all(batcher)
    assert (key, offsets, end) == ("a:0", [0, 1], 2)


def test_batcher_cut_origin_names_topic_partition_offset():
    batcher = OffsetBatcher(batch_size=2, max_wait_ms=0)
    batcher.add("my.topic:3", [b"x", b"y"], np.array([6, 7]), np.zeros(2, np.int64), now=0.0)
    (cut,) = batcher.pop_ready(lambda k: False)
    assert cut.origin(1) == {"topic": "my.topic", "partition": 3, "offset": 7}


def test_batcher_offsets_going_back_raise_naming_partition():
    batcher = OffsetBatcher(batch_size=10, max_wait_ms=0)
    batcher.add("t:2", [b"a"], np.array([5]), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="offsets of t:2 must ascend: got 5 after 5"):
        batcher.add("t:2", [b"a"], np.array([5]), np.zeros(1, np.int64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0, "max_wait_ms": 1}, "batch_size must be >= 1"),
        ({"batch_size": 1, "max_wait_ms": -1}, "max_wait_ms"),
    ],
)
def test_batcher_invalid_arguments_raise_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OffsetBatcher(**kwargs)


# --------------------------------------------------------------------------- commit protocol


@pytest.mark.parametrize("text", [None, "", "other metadata", "streamlearn/2 w:1", "streamlearn/1 :3 w: w:x"])
def test_parse_metadata_foreign_or_malformed_gives_empty_chain(text):
    assert parse_metadata(text) == []


def test_next_chain_puts_our_token_first_keeps_one_per_worker_and_caps_length():
    inherited = [Token("w-b", 4), Token("w-a", 2), Token("w-b", 3)] + [Token(f"w-{i}", i) for i in range(20)]
    chain = next_chain("w-a", 9, inherited)
    assert chain[:2] == [Token("w-a", 9), Token("w-b", 4)]
    assert len(chain) == MAX_TOKENS and len({t.worker for t in chain}) == MAX_TOKENS
    assert parse_metadata(format_metadata(chain)) == chain


def test_confirmed_seq_takes_newest_of_ledger_and_our_tokens_anywhere_in_chains():
    committed = {
        "t:0": (10, format_metadata([Token("w-b", 40), Token("w-a", 7)])),
        "t:1": (20, format_metadata([Token("w-a", 5)])),
        "t:2": (30, "not ours"),
    }
    assert confirmed_seq("w-a", 3, committed) == 7
    assert confirmed_seq("w-a", 12, committed) == 12
    assert confirmed_seq("w-c", 0, committed) == 0


@pytest.mark.parametrize(
    ("committed", "own", "expected"),
    [
        (None, None, None),  # nothing known: auto_offset_reset
        (None, 42, 42),  # never committed (offsets expired): our snapshot
        ((100, "streamlearn/1 w-a:3"), 90, 90),  # our lineage: the snapshot is the truth
        ((100, "streamlearn/1 w-a:3"), None, 100),
        ((100, "streamlearn/1 w-b:8 w-a:3"), 90, 100),  # another worker went on from our offset
        ((100, ""), 250, 100),  # set by a tool (offset reset): respected
    ],
)
def test_start_position_rules(committed, own, expected):
    assert start_position("w-a", committed, own) == expected


def test_ledger_creates_an_id_once_and_records_confirmations_durably(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger.worker_id.startswith("w-") and ledger.confirmed_seq == 0
    ledger.confirm(4, {"t:0": 120})
    ledger.confirm(3, {"t:1": 7})  # a late confirmation never moves it back
    again = Ledger(tmp_path)
    assert (again.worker_id, again.confirmed_seq, again.positions) == (
        ledger.worker_id,
        4,
        {"t:0": 120, "t:1": 7},
    )
    (tmp_path / "worker.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"worker\.json is unreadable"):
        Ledger(tmp_path)


def test_abort_after_removes_only_newer_snapshots(tmp_path):
    store = SnapshotStore(tmp_path)
    store.prepare()
    for _ in range(4):
        store.write(
            {"x": StateBundle(meta={"a": 1})}, positions={"t:0": 1}, events_applied=1, config_hash="h"
        )
    assert abort_after(store, 2) == [3, 4]
    assert store.seqs() == [1, 2]
    assert abort_after(store, 2) == []


# --------------------------------------------------------------------------- settings and configuration


def test_client_settings_split_between_consumer_and_producer():
    client = {"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "check_crcs": False, "linger_ms": 7}
    assert consumer_settings(client) == {
        "security_protocol": "SSL",
        "ssl_cafile": "/ca.pem",
        "check_crcs": False,
    }
    assert producer_settings(client) == {"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "linger_ms": 7}


@pytest.mark.parametrize(
    ("client", "message"),
    [
        ({"enable_auto_commit": True}, "'kafka.client.enable_auto_commit' is set by streamlearn"),
        ({"group_id": "x"}, "kafka.client.group_id"),
        ({"sasl_mechansim": "PLAIN"}, "did you mean 'sasl_mechanism'"),
    ],
)
def test_client_settings_reserved_or_unknown_key_raises_naming_it(client, message):
    with pytest.raises(ConfigError, match=message):
        consumer_settings(client)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "snapshot.dir must be set"),
        ({"snapshot": {"dir": "x", "keep": 1}}, "'snapshot.keep': the worker needs >= 2"),
        ({"snapshot": {"dir": "x"}, "kafka": {"client": {"nope": 1}}}, "kafka.client.nope"),
    ],
)
def test_worker_invalid_configuration_raises_naming_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Worker(load_config(overrides=overrides, environ={}))


def test_tracked_runner_counters_survive_a_snapshot_round_trip(tmp_path):
    config = load_config(environ={})
    events = make_events(30, prefix="tr")
    with Checkpointer(SnapshotStore(tmp_path), config_hash(config), background=False, catalog=False) as ckpt:
        tracked = TrackedRunner(Runner.from_config(config), "w-unit")
        tracked.process_partition("t:0", RawBatch(values=events[:20], positions={"t:0": 20}))
        tracked.process_partition("t:1", RawBatch(values=[*events[20:], b"{bad"], positions={"t:1": 11}))
        assert ckpt.snapshot(tracked, block=True)
        manifest = ckpt.last_manifest
    expected = {
        "t:0": {"records": 20, "applied": 20, "dead_letters": 0, "duplicates": 0},
        "t:1": {"records": 11, "applied": 10, "dead_letters": 1, "duplicates": 0},
    }
    assert partition_counts(manifest) == expected
    with Checkpointer(SnapshotStore(tmp_path), config_hash(config), catalog=False) as ckpt:
        fresh = TrackedRunner(Runner.from_config(config), "w-unit")
        ckpt.restore(fresh)
    assert fresh.partitions == expected and fresh.positions == {"t:0": 20, "t:1": 11}


# --------------------------------------------------------------------------- no broker at all


def test_worker_without_broker_reports_not_ready_and_stops_promptly(tmp_path):
    config = load_config(
        overrides={
            "snapshot": {"dir": str(tmp_path / "state")},
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "topics": ["t"]},
        },
        environ={},
    )
    worker = Worker(config, WorkerOptions(progress=False, metrics_port=0))
    reports = []
    thread = threading.Thread(target=lambda: reports.append(worker.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while "broker unreachable" not in worker.ready[1]:
        assert time.monotonic() < deadline, worker.ready
        time.sleep(0.05)
    assert worker.ready[0] is False and worker.metrics.ready._value.get() == 0
    stopped = time.monotonic()
    worker.stop("test")
    thread.join(20)
    assert not thread.is_alive() and time.monotonic() - stopped < 15
    (report,) = reports
    assert (report.exit_code, report.reason, report.records_this_run) == (0, "test", 0)
    assert json.loads((tmp_path / "state" / "worker.json").read_text())["worker_id"] == report.worker_id


# --------------------------------------------------------------------------- simulate --to-kafka arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to-kafka"], "argument --topic: required with --to-kafka"),
        (["--to-kafka", "--topic", "t", "--out", "x.jsonl"], "argument --out: not allowed with --to-kafka"),
        (["--to-kafka", "--topic", "t", "--rate", "0"], "argument --rate: must be > 0"),
        ([], "argument --out: required (or --to-kafka)"),
    ],
)
def test_simulate_kafka_arguments_usage_errors_name_the_argument(argv, message, capsys):
    parser = argparse.ArgumentParser()
    simulate_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--events", "10", *argv])
    assert simulate_cmd.run(args) == 2
    assert message in capsys.readouterr().err


def test_security_settings_reach_consumer_and_dead_letter_producer(tmp_path):
    from consumers.kafka import make_dead_letter_sink, make_source
    from consumers.worker.options import WorkerOptions as Options

    security = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "secret",
        "ssl_cafile": "/etc/ca.pem",
    }
    config = load_config(
        overrides={"kafka": {"client": {**security, "session_timeout_ms": 9000, "linger_ms": 2}}}, environ={}
    )
    source = make_source(config, print, print, print)
    sink = make_dead_letter_sink(config, Options())
    assert {k: source.client_kwargs[k] for k in security} == security
    assert {k: sink.client_kwargs[k] for k in security} == security
    assert source.client_kwargs["session_timeout_ms"] == 9000 and "linger_ms" not in source.client_kwargs
    assert sink.client_kwargs["linger_ms"] == 2 and "session_timeout_ms" not in sink.client_kwargs
