"""The dead-letter topic (docs/design.md §7): invalid records go to ``<topic>.dlq`` with the reason in headers.

Each dead letter is produced with its original bytes as the value and these headers (UTF-8):
``reason``, ``detail``, ``origin_topic``, ``origin_partition``, ``origin_offset`` (Kafka origins) or
``origin`` (any other origin, as JSON). A record is never dropped: sends are retried with backoff and,
when the retries are spent, :meth:`KafkaDeadLetterSink.write` raises
:class:`~consumers.sources.DeadLetterError` so that the worker stops consuming instead of moving its
offsets past a record it could not park.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka import errors as kafka_errors

from consumers.backoff import Backoff
from consumers.kafka.errors import UNAVAILABLE_ERRORS
from consumers.sources import DeadLetterError
from pipeline.errors import ConfigError
from pipeline.events import DeadLetter

__all__ = ["ADMIN_KEYS", "DeadLetterError", "KafkaDeadLetterSink", "dead_letter_headers"]

log = logging.getLogger(__name__)

_KAFKA_ORIGIN = ("topic", "partition", "offset")


def dead_letter_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """The Kafka headers that carry a dead letter's reason and origin.

    >>> dead_letter_headers(DeadLetter(0, "missing_field", "no ts", b"{}", {"topic": "t", "partition": 1, "offset": 9}))
    [('reason', b'missing_field'), ('detail', b'no ts'), ('origin_topic', b't'), ('origin_partition', b'1'), ('origin_offset', b'9')]
    """
    headers = [("reason", dead.reason.encode()), ("detail", dead.detail.encode())]
    origin = dead.origin or {}
    if set(origin) == set(_KAFKA_ORIGIN):
        headers += [(f"origin_{k}", str(origin[k]).encode()) for k in _KAFKA_ORIGIN]
    elif origin:
        headers.append(("origin", orjson.dumps(origin, default=str)))
    return headers


class KafkaDeadLetterSink:
    """Produces dead letters to a topic per source topic (``<topic><topic_suffix>``) or to one ``topic``.

    Parameters
    ----------
    bootstrap_servers
        ``"host:port"`` or a list of them.
    topic
        One dead-letter topic for everything; when None, ``<source topic><topic_suffix>``.
    topic_suffix
        Suffix of the per-topic dead-letter topics.
    attempts, backoff
        Bounded retries of a failed send (and of connecting) before :class:`DeadLetterError`.
    create_missing
        Create a missing dead-letter topic (broker defaults for partitions and replication) on first use,
        since brokers often run with automatic topic creation off.
    send_timeout_s
        How long one attempt waits for the broker's acknowledgements.
    **client_kwargs
        Extra kafka-python ``KafkaProducer`` settings (SASL/SSL, …), passed through unchanged; the admin
        client used by ``create_missing`` gets the security settings among them.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        topic: str | None = None,
        topic_suffix: str = ".dlq",
        *,
        attempts: int = 5,
        backoff: Backoff | None = None,
        create_missing: bool = True,
        send_timeout_s: float = 10.0,
        **client_kwargs,
    ):
        if topic is None and not topic_suffix:
            raise ConfigError("topic_suffix must be non-empty when no explicit topic is given")
        if attempts < 1:
            raise ConfigError(f"attempts must be >= 1, got {attempts}")
        if send_timeout_s <= 0:
            raise ConfigError(f"send_timeout_s must be > 0, got {send_timeout_s}")
        self.bootstrap_servers, self.topic, self.topic_suffix = bootstrap_servers, topic, topic_suffix
        self.attempts, self.backoff = attempts, backoff or Backoff()
        self.create_missing, self.send_timeout_s = create_missing, send_timeout_s
        self.client_kwargs = client_kwargs
        self._producer: KafkaProducer | None = None
        self._known_topics: set[str] = set()
        self.written = 0

    def topic_for(self, source_topic: str | None) -> str:
        """The dead-letter topic for records of ``source_topic``."""
        if self.topic is not None:
            return self.topic
        if not source_topic:
            raise ValueError("source_topic is needed when the sink has no explicit topic")
        return f"{source_topic}{self.topic_suffix}"

    # ------------------------------------------------------------------ writing

    def write(self, dead_letters: Sequence[DeadLetter], source_topic: str | None = None) -> int:
        """Produce every dead letter and wait for the broker to acknowledge them; returns the count.

        The topic comes from ``source_topic`` or, when None, from each letter's ``origin["topic"]``.
        Raises :class:`DeadLetterError` when some letters are still unacknowledged after the retries.
        """
        pending = list(dead_letters)
        if not pending:
            return 0
        for attempt in range(1, self.attempts + 1):
            pending = self._send_all(pending, source_topic)
            if not pending:
                self.backoff.reset()
                self.written += len(dead_letters)
                return len(dead_letters)
            if attempt < self.attempts:
                delay = self.backoff.next_delay()
                log.warning(
                    "%d dead letters not acknowledged (attempt %d/%d); retrying in %.2f s",
                    len(pending),
                    attempt,
                    self.attempts,
                    delay,
                )
                time.sleep(delay)
        raise DeadLetterError(
            f"{len(pending)} of {len(dead_letters)} dead letters could not be written to "
            f"{sorted({self._topic_of(d, source_topic) for d in pending})} on {self.bootstrap_servers} "
            f"after {self.attempts} attempts; stop consuming so that no record is lost"
        )

    def _topic_of(self, dead: DeadLetter, source_topic: str | None) -> str:
        return self.topic_for(source_topic or (dead.origin or {}).get("topic"))

    def _send_all(self, letters: list[DeadLetter], source_topic: str | None) -> list[DeadLetter]:
        """One attempt; returns the letters that failed."""
        try:
            producer = self._ensure_producer()
            for topic in {self._topic_of(d, source_topic) for d in letters} - self._known_topics:
                self._ensure_topic(topic)
            futures = [
                producer.send(
                    self._topic_of(d, source_topic), value=d.value or b"", headers=dead_letter_headers(d)
                )
                for d in letters
            ]
            producer.flush(timeout=self.send_timeout_s)
        except (*UNAVAILABLE_ERRORS, DeadLetterError) as exc:
            log.warning("dead-letter send failed: %r", exc)
            self._discard_producer()
            return letters
        failed = []
        for d, fut in zip(letters, futures):
            try:
                fut.get(timeout=self.send_timeout_s)
            except kafka_errors.KafkaError as exc:
                log.warning("dead letter %s not acknowledged: %r", d.origin, exc)
                failed.append(d)
        if failed:
            # an idempotent producer stays in a fatal state after some errors (e.g. a record too large
            # for the topic): the next attempt gets a fresh one, so a fixed topic is picked up
            self._discard_producer()
        return failed

    def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:  # already broken: nothing more to release
                log.debug("closing a failed dead-letter producer: %r", exc)

    def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            settings = {
                "bootstrap_servers": self.bootstrap_servers,
                "acks": "all",
                "linger_ms": 5,
                "max_block_ms": int(self.send_timeout_s * 1000),
                "client_id": "streamlearn-dlq",
            }
            # no retries here: write() retries the whole attempt, connecting included
            self._producer = KafkaProducer(**{**settings, **self.client_kwargs})
        return self._producer

    def _ensure_topic(self, topic: str) -> None:
        if self.create_missing:
            _create_topic(self.bootstrap_servers, topic, self.client_kwargs)
        self._known_topics.add(topic)

    # ------------------------------------------------------------------ lifecycle

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything sent so far is acknowledged (``write`` already waits)."""
        if self._producer is not None:
            self._producer.flush(timeout=timeout_s if timeout_s is not None else self.send_timeout_s)

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=self.send_timeout_s)

    def __enter__(self) -> KafkaDeadLetterSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.topic if self.topic is not None else f"<topic>{self.topic_suffix}"
        return f"KafkaDeadLetterSink({self.bootstrap_servers!r}, {where!r})"


ADMIN_KEYS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_kerberos_service_name",
    "sasl_oauth_token_provider",
    "ssl_context",
    "ssl_check_hostname",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_crlfile",
    "client_id",
)


def _create_topic(
    bootstrap_servers,
    topic: str,
    client_kwargs: Mapping[str, object],
    admin_factory: Callable[..., KafkaAdminClient] = KafkaAdminClient,
) -> None:
    security = {k: v for k, v in client_kwargs.items() if k in ADMIN_KEYS}
    try:
        admin = admin_factory(bootstrap_servers=bootstrap_servers, **security)
    except UNAVAILABLE_ERRORS as exc:
        raise DeadLetterError(
            f"cannot reach {bootstrap_servers} to create dead-letter topic {topic!r}: {exc!r}"
        ) from exc
    try:
        admin.create_topics({topic: {}}, timeout_ms=10000)
        if hasattr(admin, "wait_for_topics"):
            admin.wait_for_topics([topic], timeout_ms=10000)
    except kafka_errors.TopicAlreadyExistsError:
        pass
    except kafka_errors.KafkaError as exc:
        raise DeadLetterError(f"cannot create dead-letter topic {topic!r}: {exc!r}") from exc
    finally:
        admin.close()
