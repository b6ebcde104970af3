"""The contracts of event sources, written down as protocols: :class:`Source` and :class:`PartitionedSource`.

* :class:`Source` is what a replay iterates: micro-batches as :class:`pipeline.runner.RawBatch`, the
  position after the last batch handed out (``{key: next offset or row}``), and ``seek`` to resume
  there. :class:`consumers.file_source.FileSource` and :class:`consumers.kafka.KafkaSource` are sources.
* :class:`PartitionedSource` is what the Kafka worker (:mod:`consumers.worker`) drives: a consumer
  group whose partitions come and go, polled as :class:`PartitionRecords` per partition, with manual
  positions, pauses and committed offsets. :class:`consumers.kafka.KafkaSource` implements it over
  kafka-python; another client would implement it in a package of its own.

Partitions are keyed ``"topic:partition"`` (topic names cannot contain ``:``) and positions hold the
*next* offset to read, as committed offsets do.

Examples
--------
>>> split_key("clicks.v2:3")
('clicks.v2', 3)
>>> len(PartitionRecords("t:0", [b"a", b"b"], np.array([7, 8]), np.array([0, 0])))
2
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.errors import StreamlearnError
from pipeline.runner import RawBatch

__all__ = ["DeadLetterError", "PartitionRecords", "PartitionedSource", "Source", "split_key"]


class DeadLetterError(StreamlearnError):
    """Dead letters could not be stored; consuming must stop rather than lose them.

    Raised by a dead-letter sink (``write``) whose retries are spent; the worker then holds the batch
    and every batch after it (:mod:`consumers.worker.intake`).
    """


def split_key(key: str) -> tuple[str, int]:
    """``"clicks:3"`` -> ``("clicks", 3)``; the message names a malformed key."""
    topic, sep, part = key.rpartition(":")
    if not sep or not topic or not part.isdigit():
        raise ValueError(f"partition key must look like 'topic:partition', got {key!r}")
    return topic, int(part)


@dataclass
class PartitionRecords:
    """The records one poll returned for one partition, as columns (offsets ascending)."""

    key: str
    values: list[bytes]
    offsets: np.ndarray
    timestamps_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


@runtime_checkable
class Source(Protocol):
    """Micro-batches with resumable positions (what a replay reads)."""

    def __iter__(self) -> Iterator[RawBatch]: ...

    def positions(self) -> dict[str, int]:
        """``{key: next offset or row}`` after the batches handed out so far."""
        ...

    def seek(self, positions: Mapping[str, int]) -> object:
        """Continue from ``positions`` (keys this source does not read are ignored)."""
        ...


@runtime_checkable
class PartitionedSource(Protocol):
    """A consumer-group member with manual positions: everything :mod:`consumers.worker` calls on it.

    Rebalance callbacks (assigned, revoked, lost partitions) are given to the source when it is built
    (:func:`consumers.kafka.make_source`) and run while the worker is inside :meth:`poll_partitions`.
    Broker failures raise the client's errors (for Kafka, :data:`consumers.kafka.BROKER_ERRORS`),
    except in :meth:`poll_partitions`, which returns nothing and sets :attr:`poll_error`.
    """

    #: why the last poll returned nothing because the cluster did not answer; None after a clean poll
    poll_error: str | None

    def connect(self) -> object:
        """Reach the cluster without joining the group (committed offsets can be read after it)."""
        ...

    def subscribe(self) -> object:
        """Join the group; partitions arrive through the assignment callback."""
        ...

    def connected(self) -> bool:
        """Whether some broker of the cluster is connected (for readiness)."""
        ...

    def close(self, timeout_ms: int | None = None) -> None:
        """Run the revocation callback for the owned partitions, then leave the group."""
        ...

    def poll_partitions(self, timeout_ms: int | None = None) -> list[PartitionRecords]:
        """The next records, one :class:`PartitionRecords` per partition that had any."""
        ...

    def owned(self) -> list[str]:
        """Sorted keys of the partitions owned between rebalances."""
        ...

    def caught_up(self, key: str) -> bool:
        """Whether everything up to the partition's last known end has been returned."""
        ...

    def seek(self, positions: Mapping[str, int]) -> list[str]:
        """Move the owned partitions among ``positions`` there; returns the keys applied."""
        ...

    def seek_to_default(self, keys: Iterable[str]) -> list[str]:
        """Send the owned partitions among ``keys`` to the reset policy (earliest or latest)."""
        ...

    def pause(self, keys: Iterable[str] | None = None) -> list[str]:
        """Stop fetching these owned partitions (default: all) without leaving the group."""
        ...

    def resume(self, keys: Iterable[str] | None = None) -> list[str]:
        """Fetch these paused partitions (default: all paused) again."""
        ...

    def paused(self) -> list[str]:
        """Sorted keys of the paused partitions."""
        ...

    def commit(
        self,
        positions: Mapping[str, int] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, int]:
        """Commit ``positions`` with a metadata string per key as the group's offsets."""
        ...

    def committed_offsets(self, keys: Iterable[str], timeout_ms: int = 10000) -> dict[str, tuple[int, str]]:
        """``{key: (offset, metadata)}`` committed by the group, for any partitions (absent where none)."""
        ...

    def end_offsets(self, keys: Iterable[str], timeout_ms: int = 5000) -> dict[str, int]:
        """The next offset to be written of each partition in ``keys``."""
        ...

    def beginning_offsets(self, keys: Iterable[str], timeout_ms: int = 5000) -> dict[str, int]:
        """The first offset still in the log of each partition in ``keys``."""
        ...
