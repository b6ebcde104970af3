"""The dead-letter topic (docs/design.md §7): invalid records go to ``<topic>.dlq`` with the reason in headers.

Each dead letter is produced with its original bytes as the value and these headers (UTF-8):
``reason``, ``detail``, ``origin_topic``, ``origin_partition``, ``origin_offset`` (Kafka origins) or
``origin`` (any other origin, as JSON). A record is never dropped: sends are retried with backoff and,
when the retries are spent, :meth:`KafkaDeadLetterSink.write` raises
:class:`~consumers.sources.DeadLetterError` so that the worker pauses consuming instead of moving its
offsets past a record it could not park.

**No record is too large to park.** A dead letter never exceeds ``max_message_bytes`` (the producer's
``max_request_size`` and the ``max.message.bytes`` of the topics the sink creates are set to it; the
defaults match the broker's, 1 MiB). A larger one is written truncated: as much of the payload as
fits, and the headers ``truncated=true``, ``original_size`` (bytes) and ``sha256`` (hex digest of the
whole payload), beside the reason and origin. When an existing topic allows less, the sink reads its
``max.message.bytes`` (or, failing that, halves its limit) and truncates to fit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka import errors as kafka_errors
from kafka.admin import ConfigResource, ConfigResourceType

from consumers.backoff import Backoff
from consumers.kafka.errors import UNAVAILABLE_ERRORS
from consumers.sources import DeadLetterError
from pipeline.errors import ConfigError
from pipeline.events import DeadLetter

__all__ = ["ADMIN_KEYS", "DeadLetterError", "KafkaDeadLetterSink", "dead_letter_headers", "fit_dead_letter"]

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


#: bytes of a message's limit kept for the record batch framing and the varint lengths of a record
FRAME_BYTES = 1024
#: the ``detail`` header of a truncated dead letter is cut to this many bytes
DETAIL_BYTES = 2048
#: the smallest limit the sink shrinks to when a topic refuses a dead letter as too large
MIN_MESSAGE_BYTES = 4096


def _size(value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    return len(value) + sum(len(k) + len(v) for k, v in headers) + FRAME_BYTES


def fit_dead_letter(dead: DeadLetter, limit: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of ``dead`` as one message of at most ``limit`` bytes.

    A dead letter that fits is returned whole; a larger one keeps the head of its payload and gets
    the headers ``truncated``, ``original_size`` and ``sha256`` (of the whole payload).

    >>> value, headers = fit_dead_letter(DeadLetter(0, "oversized", "", b"x" * 10_000), 4096)
    >>> len(value) < 4096, dict(headers)["original_size"], dict(headers)["truncated"]
    (True, b'10000', b'true')
    >>> fit_dead_letter(DeadLetter(0, "oversized", "", b"{}"), 4096)[0]
    b'{}'
    """
    value = dead.value or b""
    headers = dead_letter_headers(dead)
    if _size(value, headers) <= limit:
        return value, headers
    headers = [
        (k, v[:DETAIL_BYTES].decode("utf-8", "ignore").encode()) if k == "detail" else (k, v)
        for k, v in headers
    ]
    headers += [
        ("truncated", b"true"),
        ("original_size", str(len(value)).encode()),
        ("sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    return value[: max(0, limit - _size(b"", headers))], headers


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
    max_message_bytes
        The largest dead letter written (value and headers); larger ones are truncated
        (:func:`fit_dead_letter`). The producer's ``max_request_size`` and the ``max.message.bytes``
        of created topics are set to it.
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
        max_message_bytes: int = 1_048_576,
        **client_kwargs,
    ):
        if topic is None and not topic_suffix:
            raise ConfigError("topic_suffix must be non-empty when no explicit topic is given")
        if attempts < 1:
            raise ConfigError(f"attempts must be >= 1, got {attempts}")
        if send_timeout_s <= 0:
            raise ConfigError(f"send_timeout_s must be > 0, got {send_timeout_s}")
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise ConfigError(f"max_message_bytes must be >= {MIN_MESSAGE_BYTES}, got {max_message_bytes}")
        self.bootstrap_servers, self.topic, self.topic_suffix = bootstrap_servers, topic, topic_suffix
        self.attempts, self.backoff = attempts, backoff or Backoff()
        self.create_missing, self.send_timeout_s = create_missing, send_timeout_s
        self.client_kwargs = client_kwargs
        # a smaller max_request_size among the client settings caps the messages too
        self.max_message_bytes = min(
            max_message_bytes, int(client_kwargs.get("max_request_size", max_message_bytes))
        )
        self._producer: KafkaProducer | None = None
        self._known_topics: set[str] = set()
        self._limits: dict[str, int] = {}  # topics that allow less than max_message_bytes
        self.written = 0
        self.truncated = 0

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

    def limit_for(self, topic: str) -> int:
        """The largest message the sink writes to ``topic``."""
        return self._limits.get(topic, self.max_message_bytes)

    def _send_all(self, letters: list[DeadLetter], source_topic: str | None) -> list[DeadLetter]:
        """One attempt; returns the letters that failed."""
        sent: list[tuple[DeadLetter, str, object]] = []
        try:
            producer = self._ensure_producer()
            for topic in {self._topic_of(d, source_topic) for d in letters} - self._known_topics:
                self._ensure_topic(topic)
            for d in letters:
                topic = self._topic_of(d, source_topic)
                sent.append((d, topic, self._send_one(producer, d, topic)))
            producer.flush(timeout=self.send_timeout_s)
        except (*UNAVAILABLE_ERRORS, DeadLetterError) as exc:
            log.warning("dead-letter send failed: %r", exc)
            self._discard_producer()
            return letters
        failed = []
        for d, topic, fut in sent:
            try:
                if isinstance(fut, BaseException):
                    raise fut
                fut.get(timeout=self.send_timeout_s)
            except kafka_errors.MessageSizeTooLargeError as exc:
                self._shrink(topic, exc)
                failed.append(d)
            except kafka_errors.KafkaError as exc:
                log.warning("dead letter %s not acknowledged: %r", d.origin, exc)
                failed.append(d)
        if failed:
            # an idempotent producer stays in a fatal state after some errors (e.g. a record too large
            # for the topic): the next attempt gets a fresh one, so a fixed topic is picked up
            self._discard_producer()
        return failed

    def _send_one(self, producer: KafkaProducer, dead: DeadLetter, topic: str):
        """A future for one dead letter, or the error that kept it from being sent."""
        value, headers = fit_dead_letter(dead, self.limit_for(topic))
        if len(value) < len(dead.value or b""):
            self.truncated += 1
            log.warning(
                "dead letter %s (%d bytes) truncated to %d bytes to fit %s",
                dead.origin,
                len(dead.value or b""),
                len(value),
                topic,
            )
        try:
            return producer.send(topic, value=value, headers=headers)
        except kafka_errors.KafkaError as exc:  # refused before sending (too large, topic unknown, …)
            if isinstance(exc, UNAVAILABLE_ERRORS):
                raise
            return exc

    def _shrink(self, topic: str, exc: BaseException) -> None:
        """``topic`` refused a dead letter as too large: fit its own limit from now on."""
        current = self.limit_for(topic)
        allowed = _topic_max_message_bytes(self.bootstrap_servers, topic, self.client_kwargs)
        smaller = allowed if allowed is not None and allowed < current else current // 2
        self._limits[topic] = max(MIN_MESSAGE_BYTES, smaller)
        log.warning(
            "%s refused a dead letter as too large (%r): writing at most %d bytes to it",
            topic,
            exc,
            self._limits[topic],
        )

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
                "max_request_size": self.max_message_bytes,
            }
            # no retries here: write() retries the whole attempt, connecting included
            self._producer = KafkaProducer(**{**settings, **self.client_kwargs})
        return self._producer

    def _ensure_topic(self, topic: str) -> None:
        if self.create_missing:
            _create_topic(self.bootstrap_servers, topic, self.client_kwargs, self.max_message_bytes)
        allowed = _topic_max_message_bytes(self.bootstrap_servers, topic, self.client_kwargs)
        if allowed is not None and allowed < self.max_message_bytes:
            self._limits[topic] = max(MIN_MESSAGE_BYTES, allowed)
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
    max_message_bytes: int = 1_048_576,
    admin_factory: Callable[..., KafkaAdminClient] = KafkaAdminClient,
) -> None:
    """Create ``topic`` (broker defaults but for ``max.message.bytes``) unless it exists."""
    security = {k: v for k, v in client_kwargs.items() if k in ADMIN_KEYS}
    try:
        admin = admin_factory(bootstrap_servers=bootstrap_servers, **security)
    except UNAVAILABLE_ERRORS as exc:
        raise DeadLetterError(
            f"cannot reach {bootstrap_servers} to create dead-letter topic {topic!r}: {exc!r}"
        ) from exc
    try:
        admin.create_topics(
            {topic: {"configs": {"max.message.bytes": str(max_message_bytes)}}}, timeout_ms=10000
        )
        if hasattr(admin, "wait_for_topics"):
            admin.wait_for_topics([topic], timeout_ms=10000)
    except kafka_errors.TopicAlreadyExistsError:
        pass
    except kafka_errors.KafkaError as exc:
        raise DeadLetterError(f"cannot create dead-letter topic {topic!r}: {exc!r}") from exc
    finally:
        admin.close()


def _topic_max_message_bytes(
    bootstrap_servers, topic: str, client_kwargs: Mapping[str, object]
) -> int | None:
    """The topic's ``max.message.bytes`` (its own or the broker's default), None when it cannot be read."""
    security = {k: v for k, v in client_kwargs.items() if k in ADMIN_KEYS}
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **security)
    except kafka_errors.KafkaError as exc:
        log.debug("cannot read the limits of %s: %r", topic, exc)
        return None
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, ["max.message.bytes"])], config_filter="all"
        )
        return _find_value(found, "max.message.bytes")
    except (kafka_errors.KafkaError, ValueError, TypeError) as exc:
        log.debug("cannot read the limits of %s: %r", topic, exc)
        return None
    finally:
        admin.close()


def _find_value(found, key: str) -> int | None:
    """``key``'s value anywhere in a ``describe_configs`` answer (its shape differs across versions)."""
    if isinstance(found, Mapping):
        if key in found:
            entry = found[key]
            value = entry.get("value", entry.get("config_value")) if isinstance(entry, Mapping) else entry
            return int(value) if value is not None else None
        for inner in found.values():
            if (value := _find_value(inner, key)) is not None:
                return value
    elif isinstance(found, (list, tuple)):
        for inner in found:
            if (value := _find_value(inner, key)) is not None:
                return value
    return None
