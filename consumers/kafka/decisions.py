"""The decision topic: every served decision's exposure records, produced without blocking a request.

Records are keyed by user (one user's exposures stay in order in one partition) and sent
asynchronously; a send that fails is counted and logged (``failed``), never raised into a request.
"""

from __future__ import annotations

import logging

from kafka import KafkaProducer

from consumers.kafka.errors import UNAVAILABLE_ERRORS
from pipeline.errors import StreamlearnError

__all__ = ["KafkaDecisionLog"]

log = logging.getLogger(__name__)


class KafkaDecisionLog:
    """Produces exposure records to ``topic`` (acks=all, batched by kafka-python).

    Parameters
    ----------
    bootstrap_servers, topic
        Where to write.
    client_kwargs
        kafka-python producer settings (security, …).
    """

    def __init__(self, bootstrap_servers: str, topic: str, client_kwargs: dict | None = None):
        settings = {"acks": "all", "linger_ms": 5, "max_block_ms": 1000, **(client_kwargs or {})}
        try:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **settings)
        except UNAVAILABLE_ERRORS as exc:
            raise StreamlearnError(
                f"cannot reach {bootstrap_servers} for the decision topic {topic!r}: {exc!r}"
            ) from exc
        self.topic = topic
        self.sent = 0
        self.failed = 0

    def write(self, records: list[bytes], key: str | None = None) -> None:
        raw_key = key.encode() if key is not None else None
        for value in records:
            try:
                self.producer.send(self.topic, value=value, key=raw_key).add_errback(self._failed)
                self.sent += 1
            except Exception as exc:  # buffer full or no metadata: the request is answered anyway
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        log.warning("decision record not written to %s: %r", self.topic, exc)

    def flush(self, timeout_s: float = 10.0) -> None:
        self.producer.flush(timeout=timeout_s)

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
        finally:
            self.producer.close(timeout=5)
