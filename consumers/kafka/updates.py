"""The model-updates topic: every worker's deltas, in one order that every worker reads.

One partition, so that the topic's order is the group's one order of updates (the fold of
:mod:`pipeline.group.fold` depends on it). Deltas are produced with ``acks=all`` and flushed
before a snapshot; a retried send can only repeat a delta, which the fold counts as a duplicate.
The reader is a plain assigned consumer (no group, no commits): where it is lives in the worker's
snapshot, like the source offsets.
"""

from __future__ import annotations

import logging

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.kafka.errors import UNAVAILABLE_ERRORS, KafkaUnavailableError
from consumers.kafka.producer import KafkaProduceError, ensure_topic
from consumers.kafka.settings import consumer_settings, producer_settings
from pipeline.errors import StreamlearnError

__all__ = ["UpdatesLog", "updates_topic"]

log = logging.getLogger(__name__)

#: room beyond ``max_delta_bytes`` for the record's framing
_FRAMING = 64 << 10


def updates_topic(config) -> str:
    """``group.updates_topic``, or ``<first topic>.updates``."""
    return config.group.updates_topic or f"{config.kafka.topics[0]}.updates"


class UpdatesLog:
    """Producer and reader of the updates topic.

    Parameters
    ----------
    bootstrap_servers, topic
        Where the topic lives.
    max_bytes
        Largest delta; the topic, the producer and the reader are configured for it.
    client
        ``[kafka.client]`` (security settings reach both clients).
    writer
        False for a reader only (a serving replica): the topic is neither created nor written.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        max_bytes: int,
        client: dict | None = None,
        writer: bool = True,
    ):
        self.bootstrap, self.topic, self.max_bytes = bootstrap_servers, topic, max_bytes
        self.tp = TopicPartition(topic, 0)
        self.producer: KafkaProducer | None = None
        limit = max_bytes + _FRAMING
        try:
            if writer:
                self._create(limit, client)
                prod = {"acks": "all", "linger_ms": 0, "max_request_size": limit, "max_block_ms": 5000}
                self.producer = KafkaProducer(
                    bootstrap_servers=bootstrap_servers, **{**producer_settings(client or {}), **prod}
                )
            cons = consumer_settings(client or {})
            for key in (
                "auto_offset_reset",
                "session_timeout_ms",
                "heartbeat_interval_ms",
                "group_instance_id",
            ):
                cons.pop(key, None)
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                max_partition_fetch_bytes=limit,
                fetch_max_bytes=max(limit, 52428800),
                **cons,
            )
        except UNAVAILABLE_ERRORS as exc:
            raise KafkaUnavailableError(
                f"cannot reach {bootstrap_servers} for the updates topic {topic!r}: {exc!r}"
            ) from exc
        self.consumer.assign([self.tp])
        self.failed: list[BaseException] = []

    def _create(self, limit: int, client: dict | None) -> None:
        try:
            ensure_topic(
                self.bootstrap,
                self.topic,
                1,
                producer_settings(client or {}),
                connect_timeout_s=5.0,
                configs={
                    "max.message.bytes": str(limit),
                    "segment.bytes": str(max(4 * limit, 1 << 27)),  # a segment holds the largest delta
                    "retention.ms": "-1",  # the topic after the oldest snapshot must stay readable
                },
            )
        except KafkaProduceError as exc:
            raise KafkaUnavailableError(str(exc)) from exc

    # ------------------------------------------------------------------ out
    def publish(self, value: bytes, key: str) -> None:
        """Send one delta (asynchronously; a failure shows in :attr:`failed` and in :meth:`flush`)."""
        future = self.producer.send(self.topic, value=value, key=key.encode(), partition=0)
        future.add_errback(self.failed.append)

    def flush(self, timeout_s: float) -> None:
        """Wait until every delta sent is acknowledged; raises when one was not."""
        self.producer.flush(timeout=timeout_s)
        if self.failed:
            errors, self.failed = self.failed, []
            raise StreamlearnError(f"{len(errors)} delta(s) not written to {self.topic}: {errors[0]!r}")

    # ------------------------------------------------------------------ in
    def seek(self, offset: int) -> None:
        self.consumer.seek(self.tp, offset)

    def read(self, timeout_ms: int = 0, max_records: int = 64) -> list[tuple[int, bytes]]:
        """``(offset, value)`` of the next deltas, at most ``max_records``, waiting up to ``timeout_ms``."""
        got = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [(r.offset, r.value) for r in got.get(self.tp, [])]

    def end_offset(self, timeout_ms: int = 5000) -> int:
        return int(self.consumer.end_offsets([self.tp], timeout_ms=timeout_ms)[self.tp])

    def highwater(self) -> int | None:
        """The topic's end as of the last fetch (None before one); asks the broker nothing."""
        high = self.consumer.highwater(self.tp)
        return None if high is None else int(high)

    def beginning_offset(self, timeout_ms: int = 5000) -> int:
        return int(self.consumer.beginning_offsets([self.tp], timeout_ms=timeout_ms)[self.tp])

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.flush(timeout=5)
            except Exception as exc:  # closing is best effort: the state is in the snapshot
                log.warning("flushing the updates producer failed: %r", exc)
            self.producer.close(timeout=5)
        self.consumer.close()
