"""The few places where :class:`consumers.kafka.KafkaSource` reads kafka-python's private state.

kafka-python has no public call for these; keeping them in one module makes a client upgrade one
file to check. Each falls back to doing nothing (or the public, slower call) when the attribute it
reads is missing.
"""

from __future__ import annotations

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

__all__ = ["cluster_connected", "fetch_committed", "nudge_rejoin"]


def cluster_connected(consumer: KafkaConsumer | None) -> bool:
    """Whether the consumer holds a live connection to some broker of the cluster.

    ``bootstrap_connected()`` only covers the first bootstrap, so the client's per-node state is read.
    """
    client = getattr(consumer, "_client", None)
    try:
        ids = [getattr(b, "node_id", getattr(b, "nodeId", None)) for b in client.cluster.brokers()]
        return any(client.connected(i) for i in ids if i is not None)
    except AttributeError:
        return False


def fetch_committed(
    consumer: KafkaConsumer, tps: list[TopicPartition], timeout_ms: int
) -> dict[TopicPartition, OffsetAndMetadata | None]:
    """The group's committed offsets (with metadata) of any partitions, in one request."""
    coordinator = getattr(consumer, "_coordinator", None)
    fetch = getattr(coordinator, "fetch_committed_offsets", None)
    if fetch is not None:
        return fetch(tps, timeout_ms=timeout_ms) or {}
    return {tp: consumer.committed(tp, metadata=True) for tp in tps}  # pragma: no cover - other versions


def nudge_rejoin(consumer: KafkaConsumer | None) -> None:
    """Ask the group coordinator to rejoin (a join in flight is awaited again, no new JoinGroup).

    kafka-python 3.0 race: when a rebalance was triggered by a metadata change and the poll that ran
    the revocation timed out while JoinGroup/SyncGroup were in flight, the leader's assignment clears
    the trigger, no later poll awaits the finished join, and the consumer stays without partitions for
    good. :class:`~consumers.kafka.KafkaSource` calls this on every poll until the assignment arrives.
    Only under the eager protocol (the default), where every join ends in an assignment callback.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    protocol = getattr(coordinator, "_rebalance_protocol", None)
    if getattr(protocol, "name", None) == "EAGER" and hasattr(coordinator, "request_rejoin"):
        coordinator.request_rejoin()
