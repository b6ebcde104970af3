"""Sending records to a topic: :class:`KafkaWriter` (paced, acknowledged) and :func:`ensure_topic`.

What ``streamlearn produce`` and ``streamlearn simulate --to-kafka`` send with
(:mod:`consumers.commands.produce`); the benchmarks fill their topics with it too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import TopicAlreadyExistsError

from consumers.kafka.dead_letter import ADMIN_KEYS
from pipeline.errors import ConfigError, StreamlearnError

__all__ = ["KafkaProduceError", "KafkaWriter", "ensure_topic"]


class KafkaProduceError(StreamlearnError):
    """Records could not be delivered to the topic."""


def ensure_topic(bootstrap: str, topic: str, partitions: int, client: dict | None = None) -> bool:
    """Create ``topic`` with ``partitions`` partitions unless it exists; True if it was created."""
    security = {k: v for k, v in (client or {}).items() if k in ADMIN_KEYS}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **security)
    try:
        if topic in set(admin.list_topics()):
            return False
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1}}, timeout_ms=10000
        )
        if hasattr(admin, "wait_for_topics"):
            admin.wait_for_topics([topic], timeout_ms=10000)
        return True
    except TopicAlreadyExistsError:
        return False
    finally:
        admin.close()


class KafkaWriter:
    """Sends record values to one topic, at most ``rate`` per second, acknowledged by the broker.

    Parameters
    ----------
    bootstrap, topic
        Where to send.
    rate
        Records per second (None: as fast as possible).
    client
        Extra kafka-python ``KafkaProducer`` settings (security, ``acks``, …).
    """

    def __init__(self, bootstrap: str, topic: str, rate: float | None = None, client: dict | None = None):
        if rate is not None and rate <= 0:
            raise ConfigError(f"rate must be > 0 events/s, got {rate}")
        settings = {"acks": "all", "linger_ms": 5, "batch_size": 256 * 1024, **(client or {})}
        self.topic, self.rate = topic, rate
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, **settings)
        self.sent = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._started = time.monotonic()

    def send(
        self, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None, now: bool = False
    ) -> None:
        """Send ``values`` (with ``keys``), pacing to ``rate``; ``now`` restamps each event's ``ts``."""
        step = len(values) if self.rate is None else max(1, int(self.rate / 200))
        for lo in range(0, len(values), step):
            self._pace()
            chunk = values[lo : lo + step]
            if now:
                chunk = _restamp(chunk)
            for i, value in enumerate(chunk):
                key = keys[lo + i] if keys is not None else None
                self.producer.send(self.topic, value=value, key=key).add_errback(self._failed)
            self.sent += len(chunk)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = exc

    def _pace(self) -> None:
        if self.rate is None:
            return
        ahead = self.sent / self.rate - (time.monotonic() - self._started)
        if ahead > 0:
            time.sleep(ahead)

    def close(self) -> None:
        """Wait for every acknowledgement, then close; raises when records could not be delivered."""
        self.producer.flush()
        self.producer.close()
        if self.failures:
            raise KafkaProduceError(
                f"{self.failures} of {self.sent} records were not delivered to {self.topic}: {self.last_error!r}"
            )

    def __enter__(self) -> KafkaWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _restamp(values: Sequence[bytes]) -> list[bytes]:
    ts = int(time.time() * 1000)
    out = []
    for v in values:
        try:
            obj = orjson.loads(v)
        except orjson.JSONDecodeError:
            out.append(v)  # invalid records stay invalid
            continue
        if isinstance(obj, dict):
            obj["ts"] = ts
            v = orjson.dumps(obj)
        out.append(v)
    return out
