"""``streamlearn worker``: the long-lived Kafka service with exactly-once effect on state.

Modules: :mod:`~consumers.worker.service` (the loop, rebalances, shutdown), :mod:`~consumers.worker.intake`
(records from poll to runner, dead-letter blocking), :mod:`~consumers.worker.batcher` (offset-aligned
micro-batches), :mod:`~consumers.worker.offsets` (the commit protocol), :mod:`~consumers.worker.commits`
(snapshots and commits), :mod:`~consumers.worker.tracked` (per-partition counters inside snapshots),
:mod:`~consumers.worker.health` (readiness, lag, pauses), :mod:`~consumers.worker.wiring` (ops server and
checkpointer from the configuration), :mod:`~consumers.worker.options`. The Kafka clients it drives come from
:mod:`consumers.kafka` (the worker sees the consumer as a :class:`~consumers.sources.PartitionedSource`).
"""

from consumers.worker.batcher import Cut, OffsetBatcher
from consumers.worker.offsets import Ledger
from consumers.worker.service import Worker, WorkerOptions, WorkerReport
from consumers.worker.tracked import TrackedRunner, partition_counts

__all__ = [
    "Cut",
    "Ledger",
    "OffsetBatcher",
    "TrackedRunner",
    "Worker",
    "WorkerOptions",
    "WorkerReport",
    "partition_counts",
]
