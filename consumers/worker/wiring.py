"""The worker's collaborators that are not Kafka clients, built from the configuration: ops server, checkpointer.

The Kafka clients (the group consumer, the dead-letter sink) are built in :mod:`consumers.kafka.wiring`.
"""

from __future__ import annotations

from consumers.worker.options import WorkerOptions
from pipeline.config import Config
from pipeline.metrics import StreamMetrics
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore

__all__ = ["open_checkpointer", "open_ops_server"]


def open_ops_server(config: Config, options: WorkerOptions, metrics: StreamMetrics):
    """``/metrics``, ``/healthz``, ``/readyz`` on ``metrics.address`` (loopback by default), or None when off."""
    from consumers.http_server import start_ops_server

    return start_ops_server(metrics, config, options.metrics_port)


def open_checkpointer(config: Config, options: WorkerOptions) -> tuple[SnapshotStore, Checkpointer]:
    """The snapshot store and its writer (which holds the state directory's writer lock)."""
    checkpointer = Checkpointer.from_config(config, catalog=options.catalog)
    return checkpointer.store, checkpointer
