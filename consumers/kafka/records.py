"""Kafka partitions and records as the worker takes them: ``"topic:partition"`` keys and columns.

Partitions are keyed ``"topic:partition"`` (:func:`consumers.sources.split_key`); the records one
poll returned for a partition become one :class:`~consumers.sources.PartitionRecords`.

>>> parse_key("clicks.v2:3"), partition_key(TopicPartition("clicks.v2", 3))
(TopicPartition(topic='clicks.v2', partition=3), 'clicks.v2:3')
"""

from __future__ import annotations

import numpy as np
from kafka import TopicPartition

from consumers.sources import PartitionRecords, split_key

__all__ = ["parse_key", "partition_key", "records_from_consumer"]


def partition_key(tp: TopicPartition) -> str:
    """``TopicPartition("clicks", 3)`` -> ``"clicks:3"``."""
    return f"{tp.topic}:{tp.partition}"


def parse_key(key: str) -> TopicPartition:
    """``"clicks:3"`` -> ``TopicPartition("clicks", 3)``; the message names a malformed key."""
    return TopicPartition(*split_key(key))


def records_from_consumer(tp: TopicPartition, records: list) -> PartitionRecords:
    """kafka-python's ``ConsumerRecord`` list of one partition as columns (a null value becomes ``b""``)."""
    n = len(records)
    return PartitionRecords(
        partition_key(tp),
        [b"" if r.value is None else r.value for r in records],
        np.fromiter((r.offset for r in records), dtype=np.int64, count=n),
        np.fromiter((r.timestamp for r in records), dtype=np.int64, count=n),
    )
