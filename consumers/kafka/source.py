"""Micro-batches from Kafka (docs/design.md §7): a consumer group over kafka-python with manual offsets.

:class:`KafkaSource` polls a consumer group with ``enable_auto_commit=False``; it is the
:class:`~consumers.sources.PartitionedSource` that the worker drives. :meth:`KafkaSource.poll_partitions`
hands out the records per partition as :class:`~consumers.sources.PartitionRecords`, which the
worker cuts into offset-aligned micro-batches (:mod:`consumers.worker.batcher`) and hands to the
runner as :class:`pipeline.runner.RawBatch`. The snapshot's positions are the truth: on assignment
the worker seeks to them, on revocation it snapshots and commits, and Kafka's committed offsets are written after each snapshot
(``consumers/worker`` explains the protocol; commits may carry metadata naming the snapshot).

**Broker errors.** With the broker away, :meth:`KafkaSource.poll_partitions` returns ``[]`` and says
why in :attr:`KafkaSource.poll_error` (kafka-python can raise out of a poll while it looks for the
group coordinator); :meth:`~KafkaSource.seek`, :meth:`~KafkaSource.pause`, :meth:`~KafkaSource.resume`
and :meth:`~KafkaSource.caught_up` need no broker and never raise for its absence; the calls that need
an answer (:meth:`~KafkaSource.commit`, :meth:`~KafkaSource.committed`,
:meth:`~KafkaSource.committed_offsets`, :meth:`~KafkaSource.end_offsets`, :meth:`~KafkaSource.lag`,
:meth:`~KafkaSource.connect`, :meth:`~KafkaSource.subscribe`) raise
:class:`~consumers.kafka.errors.KafkaUnavailableError` naming the call, and kafka-python's other
errors (``CommitFailedError`` after a rebalance, …) unchanged. All of them are in
:data:`~consumers.kafka.errors.BROKER_ERRORS`.

Positions are keyed ``"topic:partition"`` (topic names cannot contain ``:``) and hold the *next*
offset to read, as Kafka's committed offsets do. The rebalance listener is in
:mod:`consumers.kafka.rebalance`, the reads of kafka-python's private state in
:mod:`consumers.kafka.internals`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka import errors as kafka_errors

from consumers.backoff import Backoff
from consumers.kafka.errors import UNAVAILABLE_ERRORS, KafkaUnavailableError, retry_call
from consumers.kafka.internals import cluster_connected, fetch_committed, nudge_rejoin
from consumers.kafka.rebalance import make_listener
from consumers.kafka.records import parse_key, partition_key, records_from_consumer
from consumers.sources import PartitionRecords
from pipeline.errors import ConfigError

__all__ = ["KafkaSource", "PartitionsCallback"]

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[str]], None]


def _needs_broker(what: str):
    """Turn "the broker is away" errors of a call into :class:`KafkaUnavailableError` naming it."""

    def wrap(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except UNAVAILABLE_ERRORS as exc:
                raise KafkaUnavailableError(
                    f"{what} failed: no answer from {self.bootstrap_servers} ({exc!r})"
                ) from exc

        return call

    return wrap


class KafkaSource:
    """A consumer group over one or more topics, polled in micro-batches with manual offsets.

    Parameters
    ----------
    topics
        Topic names to subscribe to.
    bootstrap_servers
        ``"host:port"`` or a list of them.
    group_id
        Consumer group.
    max_records
        Most records per micro-batch.
    poll_timeout_ms
        How long :meth:`poll_partitions` waits for records by default.
    on_assign, on_revoke, on_lost
        Called with the sorted partition keys (``"topic:partition"``) on assignment, before
        revocation (the partitions are still owned: snapshot and commit here) and when partitions were
        lost without a clean revocation (default: ``on_revoke``). Inside them, :meth:`seek`,
        :meth:`commit`, :meth:`positions` and :meth:`pause` may be used.
    client_kwargs
        Extra kafka-python ``KafkaConsumer`` settings, passed through unchanged (SASL/SSL:
        ``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``, ``ssl_cafile``, …).
    connect_attempts, backoff
        Bounded retries of :meth:`open` while no broker answers.
    auto_offset_reset
        Where a partition without a committed offset or a seek starts: ``"earliest"`` or ``"latest"``.
    """

    def __init__(
        self,
        topics: str | Iterable[str],
        bootstrap_servers: str | list[str],
        group_id: str,
        *,
        max_records: int = 1000,
        poll_timeout_ms: int = 500,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        on_lost: PartitionsCallback | None = None,
        client_kwargs: Mapping[str, object] | None = None,
        connect_attempts: int = 5,
        backoff: Backoff | None = None,
        auto_offset_reset: str = "earliest",
    ):
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics or any(not t or ":" in t for t in self.topics):
            raise ConfigError(f"topics must be non-empty names without ':', got {self.topics!r}")
        if max_records < 1:
            raise ConfigError(f"max_records must be >= 1, got {max_records}")
        if poll_timeout_ms < 0:
            raise ConfigError(f"poll_timeout_ms must be >= 0, got {poll_timeout_ms}")
        if auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(f"auto_offset_reset must be 'earliest' or 'latest', got {auto_offset_reset!r}")
        client_kwargs = dict(client_kwargs or {})
        if client_kwargs.get("enable_auto_commit"):
            raise ConfigError(
                "client_kwargs.enable_auto_commit must stay False: the snapshot owns the offsets"
            )
        self.bootstrap_servers, self.group_id = bootstrap_servers, group_id
        self.max_records, self.poll_timeout_ms = max_records, poll_timeout_ms
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost
        self.client_kwargs, self.auto_offset_reset = client_kwargs, auto_offset_reset
        self.connect_attempts, self.backoff = connect_attempts, backoff or Backoff()
        self._consumer: KafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._owned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._handed_back: dict[TopicPartition, int] = {}
        self._awaiting_assignment = False
        self._subscribed = False
        #: why the last poll returned nothing (the broker is away), None after a poll that worked
        self.poll_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> KafkaSource:
        """Connect (bounded retries with backoff) and subscribe; idempotent."""
        return self.connect().subscribe()

    def connect(self) -> KafkaSource:
        """Create the consumer (bounded retries with backoff) without joining the group; idempotent.

        Between :meth:`connect` and :meth:`subscribe` the group's committed offsets can be read
        (:meth:`committed_offsets`) before any partition is assigned.
        """
        if self._consumer is None:
            self._consumer = retry_call(
                self._new_consumer,
                attempts=self.connect_attempts,
                backoff=self.backoff,
                what=f"connecting to {self.bootstrap_servers}",
            )
            self.backoff.reset()
            self._subscribed = False
        return self

    @_needs_broker("joining the group")
    def subscribe(self) -> KafkaSource:
        """Join the group on :attr:`topics` with the rebalance callbacks; idempotent."""
        self.connect()
        if not self._subscribed:
            self._load_topic_metadata()
            self._consumer.subscribe(
                self.topics, listener=make_listener(self._consumer, self._assigned, self._revoked)
            )
            self._subscribed = True
            self._awaiting_assignment = True
        return self

    def _load_topic_metadata(self) -> None:
        # Without the topics' metadata at hand, the first join can assign nothing and kafka-python may
        # not rejoin for a long while; fetching it before subscribing closes that race.
        for topic in self.topics:
            if not self._consumer.partitions_for_topic(topic):
                log.warning("topic %r does not exist (yet) on %s", topic, self.bootstrap_servers)

    def _new_consumer(self) -> KafkaConsumer:
        settings: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "max_poll_records": self.max_records,
            "client_id": f"streamlearn-{self.group_id}",
        }
        if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG:
            settings["bootstrap_timeout_ms"] = 10000
        return KafkaConsumer(**{**settings, **self.client_kwargs})

    @property
    def consumer(self) -> KafkaConsumer:
        """The underlying ``KafkaConsumer`` (opened on first use)."""
        if self._consumer is None:
            self.open()
        return self._consumer

    def close(self, timeout_ms: int | None = None) -> None:
        """Run ``on_revoke`` for the owned partitions, then leave the group and close the consumer.

        The callback runs before the consumer starts closing because a closing consumer can no longer
        commit; the revocation kafka-python signals while closing then finds nothing left to revoke.
        """
        consumer = self._consumer
        if consumer is None:
            return
        try:
            if self._owned:
                self._revoked(list(self._owned))
        finally:
            self._consumer = None
            consumer.close(autocommit=False, timeout_ms=timeout_ms)
            self._positions.clear()
            self._owned.clear()
            self._paused.clear()
            self._handed_back.clear()

    def __enter__(self) -> KafkaSource:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def connected(self) -> bool:
        """Whether the consumer holds a live connection to some broker of the cluster (for readiness)."""
        return cluster_connected(self._consumer)

    # ------------------------------------------------------------------ batches

    def poll_partitions(
        self, timeout_ms: int | None = None, max_records: int | None = None
    ) -> list[PartitionRecords]:
        """The next records, one :class:`PartitionRecords` per partition that had any (none: ``[]``).

        With the broker away this is ``[]`` and :attr:`poll_error` says why.
        """
        timeout = self.poll_timeout_ms if timeout_ms is None else timeout_ms
        if self._awaiting_assignment:  # kafka-python 3.0 can finish a rejoin without applying it
            nudge_rejoin(self._consumer)
        try:
            records = self.consumer.poll(timeout_ms=timeout, max_records=max_records or self.max_records)
        except UNAVAILABLE_ERRORS as exc:  # e.g. KafkaConnectionError while finding the coordinator
            self.poll_error = f"poll failed: no answer from {self.bootstrap_servers} ({exc!r})"
            log.debug("%s", self.poll_error)
            return []
        self.poll_error = None
        parts = [records_from_consumer(tp, recs) for tp, recs in records.items() if recs]
        for part in parts:
            self._positions[parse_key(part.key)] = int(part.offsets[-1]) + 1
        return parts

    # ------------------------------------------------------------------ offsets

    def assignment(self) -> list[str]:
        """Sorted keys of the partitions assigned to this consumer."""
        return sorted(partition_key(tp) for tp in self.consumer.assignment())

    def owned(self) -> list[str]:
        """Keys of the partitions this consumer owns between rebalances (empty when not connected)."""
        return sorted(partition_key(tp) for tp in self._owned)

    def positions(self) -> dict[str, int]:
        """Next offset per owned partition whose position is known (consumed from or sought)."""
        return {partition_key(tp): off for tp, off in sorted(self._positions.items()) if tp in self._owned}

    def seek(self, positions: Mapping[str, int]) -> list[str]:
        """Move the owned partitions among ``positions`` to their offsets; returns the keys applied.

        Keys of partitions this consumer does not own are ignored (another worker owns them).
        """
        wanted = {parse_key(k): int(v) for k, v in positions.items()}
        bad = {partition_key(tp): off for tp, off in wanted.items() if off < 0}
        if bad:
            raise ValueError(f"positions must be >= 0, got {bad}")
        assigned = self.consumer.assignment()
        for tp, offset in wanted.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
                self._positions[tp] = offset
        return sorted(partition_key(tp) for tp in wanted if tp in assigned)

    @_needs_broker("committing offsets")
    def commit(
        self,
        positions: Mapping[str, int] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, int]:
        """Commit ``positions`` (default: :meth:`positions`) as the group's offsets; returns what was committed.

        ``metadata`` maps partition keys to the string stored beside each offset (default empty).
        Raises kafka-python's errors (e.g. ``CommitFailedError`` after a rebalance) unchanged.
        """
        positions = self.positions() if positions is None else dict(positions)
        metadata = metadata or {}
        if positions:
            offsets = {
                parse_key(k): OffsetAndMetadata(int(v), metadata.get(k, ""), -1) for k, v in positions.items()
            }
            if timeout_ms is None:
                self.consumer.commit(offsets)
            else:
                self.consumer.commit(offsets, timeout_ms=timeout_ms)
        return positions

    @_needs_broker("reading committed offsets")
    def committed(self) -> dict[str, int]:
        """The group's committed offsets for the assigned partitions (absent where none)."""
        out = {}
        for tp in self.consumer.assignment():
            off = self.consumer.committed(tp)
            if off is not None:
                out[partition_key(tp)] = off
        return dict(sorted(out.items()))

    @_needs_broker("reading committed offsets")
    def committed_offsets(self, keys: Iterable[str], timeout_ms: int = 10000) -> dict[str, tuple[int, str]]:
        """``{key: (offset, metadata)}`` committed by the group for any partitions (absent where none).

        One request for all keys; works before :meth:`subscribe` and for partitions owned elsewhere.
        """
        tps = [parse_key(k) for k in keys]
        if not tps:
            return {}
        out = {}
        for tp, om in fetch_committed(self.consumer, tps, timeout_ms).items():
            if om is not None and om.offset is not None and om.offset >= 0:
                out[partition_key(tp)] = (int(om.offset), om.metadata or "")
        return dict(sorted(out.items()))

    @_needs_broker("reading end offsets")
    def end_offsets(self, keys: Iterable[str], timeout_ms: int = 5000) -> dict[str, int]:
        """The end (next offset to be written) of each partition in ``keys``."""
        tps = [parse_key(k) for k in keys]
        if not tps:
            return {}
        ends = self.consumer.end_offsets(tps, timeout_ms=timeout_ms)
        return {partition_key(tp): int(off) for tp, off in ends.items() if off is not None}

    @_needs_broker("reading beginning offsets")
    def beginning_offsets(self, keys: Iterable[str], timeout_ms: int = 5000) -> dict[str, int]:
        """The first offset still in the log of each partition in ``keys``."""
        tps = [parse_key(k) for k in keys]
        if not tps:
            return {}
        starts = self.consumer.beginning_offsets(tps, timeout_ms=timeout_ms)
        return {partition_key(tp): int(off) for tp, off in starts.items() if off is not None}

    def caught_up(self, key: str) -> bool:
        """Whether this consumer has returned everything up to the partition's last known end.

        Uses the fetch position (which steps over transaction markers) against the high watermark
        of the latest fetch response; False while either is unknown.
        """
        tp = parse_key(key)
        consumer = self.consumer
        if tp not in consumer.assignment():
            return False
        high = consumer.highwater(tp)
        if high is None:
            return False
        try:
            position = consumer.position(tp, timeout_ms=1000)
        except (kafka_errors.KafkaError, *UNAVAILABLE_ERRORS):
            return False
        return position is not None and position >= high

    def seek_to_default(self, keys: Iterable[str]) -> list[str]:
        """Send the owned partitions among ``keys`` to ``auto_offset_reset`` (earliest or latest)."""
        assigned = self.consumer.assignment()
        tps = [tp for tp in map(parse_key, keys) if tp in assigned]
        if tps:
            if self.auto_offset_reset == "earliest":
                self.consumer.seek_to_beginning(*tps)
            else:
                self.consumer.seek_to_end(*tps)
            for tp in tps:
                self._positions.pop(tp, None)
        return sorted(partition_key(tp) for tp in tps)

    @_needs_broker("reading the lag")
    def lag(self, timeout_ms: int = 5000) -> dict[str, int]:
        """Records behind the end of each assigned partition (``end offset - position``), for the lag gauge."""
        assigned = sorted(self.consumer.assignment())
        if not assigned:
            return {}
        ends = self.consumer.end_offsets(assigned, timeout_ms=timeout_ms)
        out = {}
        for tp in assigned:
            pos = self._positions.get(tp)
            if pos is None:
                pos = self.consumer.position(tp, timeout_ms=timeout_ms)
            if pos is not None and tp in ends:
                out[partition_key(tp)] = max(0, int(ends[tp]) - int(pos))
        return out

    # ------------------------------------------------------------------ backpressure

    def pause(self, keys: Iterable[str] | None = None) -> list[str]:
        """Stop fetching the given assigned partitions (default: all) without leaving the group.

        Returns the keys paused; keys of partitions not assigned here are ignored. Unlike a bare
        ``KafkaConsumer.pause``, the pause outlives a rebalance that hands the partition back to this
        consumer (kafka-python rebalances once more right after the first join, for one), until
        :meth:`resume`.
        """
        assigned = self.consumer.assignment()
        tps = assigned if keys is None else [tp for tp in map(parse_key, keys) if tp in assigned]
        self._paused.update(tps)
        self.consumer.pause(*tps)
        return sorted(partition_key(tp) for tp in tps)

    def resume(self, keys: Iterable[str] | None = None) -> list[str]:
        """Fetch the given paused partitions (default: all paused) again; returns the keys resumed."""
        paused = self.consumer.paused() | self._paused
        tps = paused if keys is None else [tp for tp in map(parse_key, keys) if tp in paused]
        self._paused.difference_update(tps)
        assigned = self.consumer.assignment()
        self.consumer.resume(*[tp for tp in tps if tp in assigned])
        return sorted(partition_key(tp) for tp in tps)

    def paused(self) -> list[str]:
        return sorted(partition_key(tp) for tp in self.consumer.paused())

    # ------------------------------------------------------------------ rebalance

    def _assigned(self, tps: Iterable[TopicPartition]) -> None:
        self._awaiting_assignment = False
        tps = list(tps)
        self._owned.update(tps)
        # A partition handed straight back after a clean revocation (the eager protocol revokes
        # everything on each rebalance) continues where this consumer left it, paused or not.
        for tp in tps:
            if tp in self._handed_back:
                self._positions[tp] = self._handed_back[tp]
                self._consumer.seek(tp, self._positions[tp])
        self._handed_back.clear()
        repause = [tp for tp in tps if tp in self._paused]
        if repause:
            self._consumer.pause(*repause)
        if tps and self.on_assign is not None:
            self.on_assign(sorted(partition_key(tp) for tp in tps))

    def _revoked(self, tps: Iterable[TopicPartition], lost: bool = False) -> None:
        # Only owned partitions: the eager protocol revokes an empty set on first join, and close()
        # has already revoked everything when kafka-python signals the revocation of a closing consumer.
        tps = [tp for tp in tps if tp in self._owned]
        self._awaiting_assignment = self._consumer is not None
        callback = (self.on_lost or self.on_revoke) if lost else self.on_revoke
        try:
            if tps and callback is not None:
                callback(sorted(partition_key(tp) for tp in tps))
        finally:
            for tp in tps:
                self._owned.discard(tp)
                position = self._positions.pop(tp, None)
                if position is not None and not lost:
                    self._handed_back[tp] = position
                elif lost:
                    self._paused.discard(tp)

    def __repr__(self) -> str:
        return (
            f"KafkaSource(topics={self.topics!r}, group_id={self.group_id!r}, max_records={self.max_records})"
        )
