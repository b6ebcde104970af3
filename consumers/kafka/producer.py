"""Sending records to a topic: :class:`KafkaWriter` (paced, acknowledged) and :func:`ensure_topic`.

What ``streamlearn produce`` and ``streamlearn simulate --to-kafka`` send with
(:mod:`consumers.commands.produce`); the benchmarks fill their topics with it too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, TopicAlreadyExistsError

from consumers.kafka.dead_letter import ADMIN_KEYS
from consumers.kafka.errors import UNAVAILABLE_ERRORS
from pipeline.errors import ConfigError, StreamlearnError

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "KafkaProduceError", "KafkaWriter", "ensure_topic"]

#: how long connecting (and waiting for a topic's metadata) may take before producing gives up
DEFAULT_CONNECT_TIMEOUT_S = 10.0


class KafkaProduceError(StreamlearnError):
    """Records could not be delivered to the topic (or the broker could not be reached)."""


def _unreachable(bootstrap: str, timeout_s: float, exc: BaseException) -> KafkaProduceError:
    return KafkaProduceError(
        f"cannot reach the Kafka broker at {bootstrap} within {timeout_s:g} s ({type(exc).__name__}); "
        "is it running, and is the bootstrap address right?"
    )


def _bounded(timeout_s: float) -> dict:
    ms = max(1, int(timeout_s * 1000))
    return {"bootstrap_timeout_ms": ms, "max_block_ms": ms}


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    client: dict | None = None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    configs: dict[str, str] | None = None,
) -> bool:
    """Create ``topic`` with ``partitions`` partitions (and topic ``configs``) unless it exists;
    True if it was created.

    Raises :class:`KafkaProduceError` when no broker answers within ``connect_timeout_s``.
    """
    security = {k: v for k, v in (client or {}).items() if k in ADMIN_KEYS}
    ms = max(1, int(connect_timeout_s * 1000))
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=ms, **security)
    except UNAVAILABLE_ERRORS as exc:
        raise _unreachable(bootstrap, connect_timeout_s, exc) from exc
    try:
        if topic in set(admin.list_topics()):
            return False
        spec = {"num_partitions": partitions, "replication_factor": 1}
        if configs:
            spec["configs"] = dict(configs)
        admin.create_topics({topic: spec}, timeout_ms=10000)
        if hasattr(admin, "wait_for_topics"):
            admin.wait_for_topics([topic], timeout_ms=10000)
        return True
    except TopicAlreadyExistsError:
        return False
    except KafkaError as exc:
        raise KafkaProduceError(f"cannot create topic {topic!r} on {bootstrap}: {exc!r}") from exc
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
    connect_timeout_s
        How long connecting, and any one send waiting for metadata or buffer space, may block; then
        :class:`KafkaProduceError`, as for records still unacknowledged when :meth:`close` ends.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        rate: float | None = None,
        client: dict | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ):
        if rate is not None and rate <= 0:
            raise ConfigError(f"rate must be > 0 events/s, got {rate}")
        if connect_timeout_s <= 0:
            raise ConfigError(f"connect timeout must be > 0 s, got {connect_timeout_s}")
        settings = {
            "acks": "all",
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            **_bounded(connect_timeout_s),
            **(client or {}),
        }
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.connect_timeout_s = connect_timeout_s
        try:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap, **settings)
        except UNAVAILABLE_ERRORS as exc:
            raise _unreachable(bootstrap, connect_timeout_s, exc) from exc
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
                try:
                    future = self.producer.send(self.topic, value=value, key=key)
                except KafkaError as exc:  # no metadata or buffer space within max_block_ms
                    raise KafkaProduceError(
                        f"sending to {self.topic} on {self.bootstrap} failed after {self.sent + i:,} "
                        f"records: {exc!r}"
                    ) from exc
                future.add_errback(self._failed)
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
        try:
            self.producer.flush()
        except KafkaError as exc:
            self._failed(exc)
        finally:
            self.producer.close(timeout=self.connect_timeout_s)
        if self.failures:
            raise KafkaProduceError(
                f"{self.failures} of {self.sent} records were not delivered to {self.topic}: {self.last_error!r}"
            )

    def __enter__(self) -> KafkaWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # an error is on its way out: release the client without waiting on it
            self.producer.close(timeout=0)


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
