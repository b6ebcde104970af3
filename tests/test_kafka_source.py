"""KafkaSource and KafkaDeadLetterSink against the real session broker (plus their pure helpers)."""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from consumers.backoff import Backoff
from consumers.kafka import (
    DeadLetterError,
    KafkaDeadLetterSink,
    KafkaSource,
    KafkaUnavailableError,
    parse_key,
    partition_key,
    retry_call,
)
from consumers.sources import PartitionRecords
from pipeline.errors import ConfigError
from pipeline.events import DeadLetter
from tests.kafka.broker import free_port

FAST_GROUP = {"heartbeat_interval_ms": 200, "session_timeout_ms": 6000}


@pytest.fixture
def source_factory(kafka_broker):
    """``source_factory(topics, group=None, **kwargs) -> KafkaSource`` (opened); all closed after the test."""
    made: list[KafkaSource] = []

    def make(topics, group: str | None = None, **kwargs) -> KafkaSource:
        group = group or f"g-{time.monotonic_ns()}"
        kwargs.setdefault("client_kwargs", FAST_GROUP)
        src = KafkaSource(topics, kafka_broker.bootstrap, group, **kwargs)
        made.append(src)
        return src.open()

    yield make
    for src in made:
        src.close()


def _produce(producer, topic: str, per_partition: dict[int, int]) -> None:
    for p, n in per_partition.items():
        for i in range(n):
            producer.send(topic, value=orjson.dumps({"p": p, "i": i}), partition=p)
    producer.flush()


def kafka_committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets, read by a separate plain consumer that never joins the group."""
    check = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: check.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        check.close(autocommit=False)


def _polls(src: KafkaSource, expect: int, deadline_s: float = 20.0) -> list[list[PartitionRecords]]:
    """The non-empty polls until ``expect`` records arrived."""
    polls, got, end = [], 0, time.monotonic() + deadline_s
    while got < expect and time.monotonic() < end:
        parts = src.poll_partitions(200)
        if parts:
            polls.append(parts)
            got += sum(len(p) for p in parts)
    assert got == expect, f"consumed {got} of {expect} records"
    return polls


def _drain(src: KafkaSource, expect: int, deadline_s: float = 20.0) -> list[PartitionRecords]:
    return [part for parts in _polls(src, expect, deadline_s) for part in parts]


def _offsets(parts: list[PartitionRecords]) -> list[tuple[int, int]]:
    """Sorted ``(partition, offset)`` of every record."""
    return sorted((parse_key(p.key).partition, int(o)) for p in parts for o in p.offsets)


def _counters(parts: list[PartitionRecords]) -> list[int]:
    """The ``i`` of every record, in order."""
    return [orjson.loads(v)["i"] for p in parts for v in p.values]


# --------------------------------------------------------------------------- pure helpers


def test_partition_key_roundtrip_with_dotted_topic():
    tp = TopicPartition("events.v1-x", 12)
    assert partition_key(tp) == "events.v1-x:12"
    assert parse_key("events.v1-x:12") == tp


@pytest.mark.parametrize("bad", ["nocolon", ":3", "t:", "t:-1", "t:x"])
def test_parse_key_malformed_raises_naming_key(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        parse_key(bad)


def test_backoff_without_jitter_doubles_up_to_cap_and_resets():
    b = Backoff(initial_s=0.1, max_s=1.0, factor=2.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)


def test_backoff_jitter_same_seed_same_delays_within_bounds():
    a = [Backoff(initial_s=1.0, max_s=100.0, jitter=0.5, seed=7).next_delay() for _ in range(3)]
    seq1 = Backoff(initial_s=1.0, max_s=100.0, jitter=0.5, seed=7)
    seq2 = Backoff(initial_s=1.0, max_s=100.0, jitter=0.5, seed=7)
    d1 = [seq1.next_delay() for _ in range(8)]
    assert d1 == [seq2.next_delay() for _ in range(8)]
    assert len(set(a)) == 1
    for k, d in enumerate(d1):
        assert 0.5 * 2**k <= d <= min(100.0, 1.5 * 2**k)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_s": 0}, "initial_s must be > 0, got 0"),
        ({"initial_s": 2, "max_s": 1}, "max_s must be >= initial_s"),
        ({"factor": 0.5}, "factor must be >= 1, got 0.5"),
        ({"jitter": 1.0}, r"jitter must be in \[0, 1\), got 1.0"),
    ],
)
def test_backoff_invalid_argument_raises_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_retry_call_gives_up_after_attempts_with_unavailable_error():
    calls, sleeps = [], []

    def always_down():
        calls.append(1)
        raise ConnectionRefusedError("down")

    with pytest.raises(KafkaUnavailableError, match="probe failed after 3 attempts"):
        retry_call(
            always_down,
            attempts=3,
            backoff=Backoff(0.1, 1.0, jitter=0.0),
            retry_on=(ConnectionRefusedError,),
            sleep=sleeps.append,
            what="probe",
        )
    assert len(calls) == 3
    assert sleeps == pytest.approx([0.1, 0.2])


def test_retry_call_succeeds_after_transient_failures():
    outcomes = iter([OSError("x"), OSError("y"), 42])

    def flaky():
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    assert retry_call(flaky, attempts=3, retry_on=(OSError,), sleep=lambda _: None) == 42


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topics": []}, "topics must be non-empty"),
        ({"topics": "a:b"}, "without ':'"),
        ({"max_records": 0}, "max_records must be >= 1, got 0"),
        ({"auto_offset_reset": "none"}, "auto_offset_reset must be"),
        ({"client_kwargs": {"enable_auto_commit": True}}, "enable_auto_commit must stay False"),
    ],
)
def test_source_invalid_config_raises_config_error(kwargs, message):
    args = {"topics": "t", "bootstrap_servers": "127.0.0.1:1", "group_id": "g", **kwargs}
    with pytest.raises(ConfigError, match=message):
        KafkaSource(**args)


def test_open_unreachable_broker_gives_up_with_unavailable_error():
    src = KafkaSource(
        "t",
        f"127.0.0.1:{free_port()}",
        "g",
        connect_attempts=2,
        backoff=Backoff(0.05, 0.1, jitter=0.0),
        client_kwargs={"bootstrap_timeout_ms": 300},
    )
    start = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match="failed after 2 attempts"):
        src.open()
    assert time.monotonic() - start < 10
    assert not src.connected()


# --------------------------------------------------------------------------- micro-batches


def test_poll_partitions_carry_keys_offsets_and_timestamps_at_most_max_records(
    topic_factory, producer, source_factory
):
    topic = topic_factory(partitions=2)
    before_ms = int(time.time() * 1000)
    _produce(producer, topic, {0: 13, 1: 9})
    src = source_factory(topic, max_records=5)

    polls = _polls(src, 22)

    seen: dict[int, list[int]] = {0: [], 1: []}
    for parts in polls:
        assert 1 <= sum(len(p) for p in parts) <= 5
        assert len({p.key for p in parts}) == len(parts)
        for part in parts:
            assert len(part.values) == len(part.offsets) == len(part.timestamps_ms)
            assert np.all(np.diff(part.offsets) > 0)
            for raw, offset in zip(part.values, part.offsets):
                rec = orjson.loads(raw)
                assert (part.key, int(offset)) == (f"{topic}:{rec['p']}", rec["i"])
                seen[rec["p"]].append(rec["i"])
            assert np.all(part.timestamps_ms >= before_ms - 1000)
    assert seen == {0: list(range(13)), 1: list(range(9))}
    assert src.positions() == {f"{topic}:0": 13, f"{topic}:1": 9}
    assert src.poll_partitions(100) == []


def test_poll_null_value_becomes_empty_bytes(topic_factory, producer, source_factory):
    topic = topic_factory()
    producer.send(topic, value=None, key=b"k")
    producer.send(topic, value=b"x")
    producer.flush()
    parts = _drain(source_factory(topic), 2)
    assert [v for p in parts for v in p.values] == [b"", b"x"]


def test_poll_two_topics_keys_name_each_topic(topic_factory, producer, source_factory):
    t1, t2 = topic_factory(), topic_factory()
    _produce(producer, t1, {0: 3})
    _produce(producer, t2, {0: 4})
    src = source_factory([t1, t2])
    parts = _drain(src, 7)
    topics = [parse_key(p.key).topic for p in parts for _ in p.values]
    assert sorted(topics) == [t1] * 3 + [t2] * 4
    assert src.positions() == dict(sorted({f"{t1}:0": 3, f"{t2}:0": 4}.items()))


# --------------------------------------------------------------------------- seek, commit, lag


def test_seek_on_assign_starts_at_snapshot_positions(kafka_broker, topic_factory, producer):
    topic = topic_factory(partitions=2)
    _produce(producer, topic, {0: 10, 1: 10})
    # the worker's pattern: positions of the newest snapshot are sought on every assignment and
    # brought up to date on every revocation
    snapshot = {f"{topic}:0": 7, f"{topic}:1": 4, "other-topic:0": 99}
    applied = []
    holder: dict[str, KafkaSource] = {}

    def on_assign(keys):
        applied.append((keys, holder["src"].seek(snapshot)))

    def on_revoke(keys):
        snapshot.update(holder["src"].positions())

    holder["src"] = src = KafkaSource(
        topic,
        kafka_broker.bootstrap,
        f"g-seek-{time.monotonic_ns()}",
        on_assign=on_assign,
        on_revoke=on_revoke,
        client_kwargs=FAST_GROUP,
    )
    try:
        src.open()
        parts = _drain(src, 3 + 6)
        assert _offsets(parts) == [(0, o) for o in range(7, 10)] + [(1, o) for o in range(4, 10)]
        assert applied[0] == ([f"{topic}:0", f"{topic}:1"], [f"{topic}:0", f"{topic}:1"])
        assert src.positions() == {f"{topic}:0": 10, f"{topic}:1": 10}
    finally:
        src.close()


def test_seek_after_poll_rewinds_and_rereads(topic_factory, producer, source_factory):
    topic = topic_factory()
    _produce(producer, topic, {0: 6})
    src = source_factory(topic)
    _drain(src, 6)
    assert src.seek({f"{topic}:0": 2}) == [f"{topic}:0"]
    assert src.positions() == {f"{topic}:0": 2}
    assert _counters(_drain(src, 4)) == [2, 3, 4, 5]


def test_commit_positions_are_used_by_next_group_member(
    kafka_broker, topic_factory, producer, source_factory
):
    topic = topic_factory()
    _produce(producer, topic, {0: 10})
    group = f"g-commit-{time.monotonic_ns()}"
    first = source_factory(topic, group=group, max_records=4)
    _drain(first, 4)
    assert first.commit() == {f"{topic}:0": 4}
    assert first.committed() == {f"{topic}:0": 4}
    assert first.commit({f"{topic}:0": 6}) == {f"{topic}:0": 6}
    first.close()

    second = source_factory(topic, group=group)
    assert _counters(_drain(second, 4)) == [6, 7, 8, 9]


def test_close_runs_on_revoke_which_can_commit(kafka_broker, topic_factory, producer):
    topic = topic_factory(partitions=2)
    _produce(producer, topic, {0: 5, 1: 3})
    group = f"g-close-{time.monotonic_ns()}"
    revoked = []
    holder: dict[str, KafkaSource] = {}

    def on_revoke(keys):
        revoked.append((keys, holder["src"].commit()))

    holder["src"] = src = KafkaSource(
        topic, kafka_broker.bootstrap, group, on_revoke=on_revoke, client_kwargs=FAST_GROUP
    )
    src.open()
    _drain(src, 8)
    src.close()
    # the last revocation is close()'s (kafka-python may rebalance once more after the first join)
    assert revoked[-1] == ([f"{topic}:0", f"{topic}:1"], {f"{topic}:0": 5, f"{topic}:1": 3})
    assert kafka_committed(kafka_broker.bootstrap, group, topic, 2) == {0: 5, 1: 3}


def _pausing_source(bootstrap: str, topic: str, pause: list[str], **kwargs) -> KafkaSource:
    """A source that pauses ``pause`` on its first assignment (how a worker applies backpressure).

    Later assignments (kafka-python rebalances once more right after the first join) must keep the
    pause by themselves.
    """
    holder: dict[str, KafkaSource] = {}
    armed = [True]

    def on_assign(keys):
        if armed:
            armed.clear()
            assert holder["src"].pause(pause) == sorted(pause)

    holder["src"] = src = KafkaSource(
        topic,
        bootstrap,
        f"g-pause-{time.monotonic_ns()}",
        on_assign=on_assign,
        client_kwargs=FAST_GROUP,
        **kwargs,
    )
    return src.open()


def test_lag_counts_records_behind_end(kafka_broker, topic_factory, producer):
    topic = topic_factory(partitions=2)
    _produce(producer, topic, {0: 10, 1: 2})
    src = _pausing_source(kafka_broker.bootstrap, topic, [f"{topic}:1"], max_records=1)
    try:
        _drain(src, 4)
        assert src.lag() == {f"{topic}:0": 6, f"{topic}:1": 2}
    finally:
        src.close()


def test_pause_then_resume_partition_controls_fetching(kafka_broker, topic_factory, producer):
    topic = topic_factory(partitions=2)
    _produce(producer, topic, {0: 4, 1: 4})
    src = _pausing_source(kafka_broker.bootstrap, topic, [f"{topic}:0"])
    try:
        first = _drain(src, 4)
        assert {partition for partition, _ in _offsets(first)} == {1}
        assert src.paused() == [f"{topic}:0"]
        assert src.poll_partitions(300) == []
        assert src.pause(["not-assigned:0"]) == []
        assert src.resume() == [f"{topic}:0"]
        assert src.paused() == []
        second = _drain(src, 4)
        assert {partition for partition, _ in _offsets(second)} == {0}
    finally:
        src.close()


def test_rebalance_second_member_revokes_with_commit_then_splits_partitions(
    kafka_broker, topic_factory, producer
):
    topic = topic_factory(partitions=2)
    _produce(producer, topic, {0: 3, 1: 3})
    group = f"g-rebalance-{time.monotonic_ns()}"
    events: list[tuple] = []
    sources: dict[str, KafkaSource] = {}

    def callbacks(name):
        def on_assign(keys):
            events.append((name, "assign", keys))

        def on_revoke(keys):
            events.append((name, "revoke", keys, sources[name].commit()))

        return {"on_assign": on_assign, "on_revoke": on_revoke}

    for name in ("a", "b"):
        sources[name] = KafkaSource(
            topic, kafka_broker.bootstrap, group, client_kwargs=FAST_GROUP, **callbacks(name)
        )
    a, b = sources["a"].open(), sources["b"]
    try:
        _drain(a, 6)
        stop = threading.Event()

        def keep_polling_a():  # a must keep polling to take part in the rebalance
            while not stop.is_set():
                a.poll_partitions(100)

        poller = threading.Thread(target=keep_polling_a, daemon=True)
        poller.start()
        b.open()
        deadline = time.monotonic() + 20
        while (len(b.assignment()), len(a.assignment())) != (1, 1) and time.monotonic() < deadline:
            b.poll_partitions(100)
        stop.set()
        poller.join(10)
        assert sorted(a.assignment() + b.assignment()) == [f"{topic}:0", f"{topic}:1"]
        # the last time a gave up both partitions was for b; its commit there covered everything it read
        full = [e for e in events if e[:3] == ("a", "revoke", [f"{topic}:0", f"{topic}:1"])]
        assert full[-1][3] == {f"{topic}:0": 3, f"{topic}:1": 3}
        assert kafka_committed(kafka_broker.bootstrap, group, topic, 2) == {0: 3, 1: 3}
    finally:
        for s in sources.values():
            s.close()


# --------------------------------------------------------------------------- dead-letter topic


def test_dead_letter_sink_writes_value_and_headers_to_dlq_topic(kafka_broker, topic_factory):
    topic = topic_factory()
    letters = [
        DeadLetter(
            0,
            "missing_field",
            "missing required field 'ts'",
            b'{"a":1}',
            {"topic": topic, "partition": 0, "offset": 5},
        ),
        DeadLetter(
            1, "malformed_json", "invalid JSON", b"{oops", {"topic": topic, "partition": 0, "offset": 6}
        ),
        DeadLetter(2, "empty_record", "empty record", None, {"topic": topic, "partition": 0, "offset": 7}),
    ]
    with KafkaDeadLetterSink(kafka_broker.bootstrap, backoff=Backoff(0.05, 0.2)) as sink:
        assert sink.write(letters, source_topic=topic) == 3
        assert sink.topic_for(topic) == f"{topic}.dlq"
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        consumer.assign([TopicPartition(f"{topic}.dlq", 0)])
        recs = []
        deadline = time.monotonic() + 10
        while len(recs) < 3 and time.monotonic() < deadline:
            for rs in consumer.poll(200).values():
                recs.extend(rs)
    finally:
        consumer.close()
    assert [r.value for r in recs] == [b'{"a":1}', b"{oops", b""]
    headers = [dict(r.headers) for r in recs]
    assert headers[0] == {
        "reason": b"missing_field",
        "detail": b"missing required field 'ts'",
        "origin_topic": topic.encode(),
        "origin_partition": b"0",
        "origin_offset": b"5",
    }
    assert [h["reason"] for h in headers] == [b"missing_field", b"malformed_json", b"empty_record"]
    assert [h["origin_offset"] for h in headers] == [b"5", b"6", b"7"]


def test_dead_letter_sink_explicit_topic_and_file_origin_as_json(kafka_broker, topic_factory):
    dlq = topic_factory()
    letter = DeadLetter(3, "wrong_type", "bad label", b"{}", {"file": "events.jsonl", "line": 4})
    with KafkaDeadLetterSink(kafka_broker.bootstrap, topic=dlq) as sink:
        sink.write([letter])
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        consumer.assign([TopicPartition(dlq, 0)])
        recs = []
        deadline = time.monotonic() + 10
        while not recs and time.monotonic() < deadline:
            recs = [r for rs in consumer.poll(200).values() for r in rs]
    finally:
        consumer.close()
    (rec,) = recs
    assert orjson.loads(dict(rec.headers)["origin"]) == {"file": "events.jsonl", "line": 4}


def test_dead_letter_sink_unreachable_broker_raises_after_retries():
    sink = KafkaDeadLetterSink(
        f"127.0.0.1:{free_port()}",
        attempts=2,
        backoff=Backoff(0.05, 0.1, jitter=0.0),
        send_timeout_s=0.5,
        bootstrap_timeout_ms=300,
    )
    letter = DeadLetter(0, "missing_field", "x", b"{}", {"topic": "t", "partition": 0, "offset": 0})
    start = time.monotonic()
    with pytest.raises(DeadLetterError, match=r"1 of 1 dead letters could not be written to \['t.dlq'\]"):
        sink.write([letter])
    assert time.monotonic() - start < 15
    sink.close()


def test_poll_across_broker_restart_resumes_without_loss_or_repeat(
    kafka_broker, topic_factory, source_factory
):
    topic = topic_factory()
    with kafka_broker.producer() as prod:
        _produce(prod, topic, {0: 5})
    src = source_factory(topic)
    first = _drain(src, 5)

    kafka_broker.stop()
    assert src.poll_partitions(300) == []  # the broker is away: no records, no exception
    kafka_broker.start()

    with kafka_broker.producer() as prod:
        for i in range(5, 8):
            prod.send(topic, value=orjson.dumps({"p": 0, "i": i}))
        prod.flush()
    second = _drain(src, 3, deadline_s=30)
    assert _counters(first + second) == list(range(8))
    assert src.positions() == {f"{topic}:0": 8}
    assert src.connected()


def test_every_source_call_under_a_stopped_broker_behaves_as_documented(
    kafka_broker, topic_factory, source_factory
):
    topic = topic_factory()
    key = f"{topic}:0"
    with kafka_broker.producer() as prod:
        _produce(prod, topic, {0: 5})
    src = source_factory(topic)
    assert _counters(_drain(src, 5)) == list(range(5))

    kafka_broker.stop()
    try:
        for _ in range(5):  # the broker is away: no records, no exception
            assert src.poll_partitions(200) == []
        # calls that need no broker answer as usual
        assert src.seek({key: 2}) == [key]
        assert src.pause([key]) == [key] and src.paused() == [key]
        assert src.resume([key]) == [key] and src.paused() == []
        assert src.owned() == [key] and src.positions() == {key: 2}
        assert src.caught_up(key) in (True, False)
        # calls that need an answer raise the documented error, naming the call, in bounded time
        calls = {
            "committing offsets": lambda: src.commit({key: 5}, timeout_ms=2000),
            "reading end offsets": lambda: src.end_offsets([key], timeout_ms=2000),
            "reading committed offsets": lambda: src.committed_offsets([key], timeout_ms=2000),
            "reading the lag": lambda: src.lag(timeout_ms=2000),
        }
        for what, call in calls.items():
            started = time.monotonic()
            with pytest.raises(KafkaUnavailableError, match=f"^{what} failed: no answer from"):
                call()
            assert time.monotonic() - started < 10, what
        wait_for_condition = time.monotonic() + 10
        while src.connected() and time.monotonic() < wait_for_condition:
            src.poll_partitions(100)
        assert not src.connected()
    finally:
        kafka_broker.start()

    # back: reading resumes at the sought position
    again = _drain(src, 3, deadline_s=30)
    assert _counters(again) == [2, 3, 4]
    assert src.poll_error is None
