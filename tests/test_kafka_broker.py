"""The real-Kafka test harness: the session broker, its restart, the topic factory and the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.kafka import broker as harness
from tests.kafka.broker import KafkaHarnessError


def _read_all(bootstrap: str, topic: str, partitions: int = 1, expect: int = 0) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        values: list[bytes] = []
        for _ in range(50):
            for recs in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in recs)
            if len(values) >= expect:
                break
        return values
    finally:
        consumer.close()


def test_start_broker_session_fixture_answers_on_loopback(kafka_broker):
    host, port = kafka_broker.bootstrap.split(":")
    assert host == "127.0.0.1"
    assert int(port) == kafka_broker.port
    cluster = kafka_broker.admin().describe_cluster()
    assert [b["port"] for b in cluster["brokers"]] == [kafka_broker.port]
    assert kafka_broker.is_running()
    assert kafka_broker.log_path.exists()


def test_produce_then_consume_roundtrip_returns_same_values(kafka_broker, topic_factory, producer):
    topic = topic_factory()
    sent = [f"v{i}".encode() for i in range(20)]
    for v in sent:
        producer.send(topic, value=v)
    producer.flush()
    assert _read_all(kafka_broker.bootstrap, topic, expect=len(sent)) == sent


def test_topic_factory_unique_names_have_requested_partitions(kafka_broker, topic_factory):
    a, b = topic_factory(partitions=3), topic_factory()
    assert a != b
    described = {t["name"]: t for t in kafka_broker.admin().describe_topics([a, b])}
    assert len(described[a]["partitions"]) == 3
    assert len(described[b]["partitions"]) == 1


def test_topic_factory_zero_partitions_raises(topic_factory):
    with pytest.raises(ValueError, match="partitions must be >= 1, got 0"):
        topic_factory(partitions=0)


def test_auto_topic_creation_is_off(kafka_broker):
    assert "never-created" not in kafka_broker.admin().list_topics()
    text = kafka_broker.config_path.read_text()
    assert "auto.create.topics.enable=false" in text


def test_restart_broker_same_ports_keeps_data(kafka_broker, topic_factory):
    topic = topic_factory(partitions=2)
    before = [f"b{i}".encode() for i in range(6)]
    with kafka_broker.producer() as prod:
        for i, v in enumerate(before):
            prod.send(topic, value=v, partition=i % 2)
        prod.flush()
    port, data_dir, pid = kafka_broker.port, kafka_broker.data_dir, kafka_broker.pid

    kafka_broker.stop()
    assert not kafka_broker.is_running()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    kafka_broker.start()

    assert (kafka_broker.port, kafka_broker.data_dir) == (port, data_dir)
    assert kafka_broker.pid != pid
    with kafka_broker.producer() as prod:
        prod.send(topic, value=b"after", partition=0)
        prod.flush()
    got = _read_all(kafka_broker.bootstrap, topic, partitions=2, expect=7)
    assert sorted(got) == sorted([*before, b"after"])


def test_missing_java_fails_with_install_hint(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(KafkaHarnessError, match="install a Java 17"):
        harness._java()


@pytest.mark.kafka
def test_cli_up_status_down_manages_one_broker(tmp_path):
    env = {**os.environ, "STREAMLEARN_KAFKA_STATE_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "tests.kafka.broker"]

    def run(*args):
        return subprocess.run(
            [*cli, *args], cwd=harness.REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
        )

    up = run("up")
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((tmp_path / "state.json").read_text())
        assert up.stdout.strip() == state["bootstrap"] == f"127.0.0.1:{state['port']}"
        assert run("up").stdout.strip() == state["bootstrap"]  # idempotent: the same broker
        assert run("status").returncode == 0
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert run("status").returncode == 1
    assert not (tmp_path / "state.json").exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", state["port"])) != 0
