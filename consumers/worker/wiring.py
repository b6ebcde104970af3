"""The worker's collaborators that are not Kafka clients, built from the configuration: ops server, checkpointer.

The Kafka clients (the group consumer, the dead-letter sink) are built in :mod:`consumers.kafka.wiring`.
"""

from __future__ import annotations

import sys

from consumers.worker.options import WorkerOptions
from pipeline.config import Config
from pipeline.metrics import StreamMetrics
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore

__all__ = ["open_checkpointer", "open_ops_server", "open_serving_server", "serving_options"]


def open_ops_server(config: Config, options: WorkerOptions, metrics: StreamMetrics):
    """``/metrics``, ``/healthz``, ``/readyz`` on ``metrics.address`` (loopback by default), or None when off."""
    from consumers.http_server import start_ops_server

    return start_ops_server(metrics, config, options.metrics_port)


def open_checkpointer(config: Config, options: WorkerOptions) -> tuple[SnapshotStore, Checkpointer]:
    """The snapshot store and its writer (which holds the state directory's writer lock)."""
    checkpointer = Checkpointer.from_config(config, catalog=options.catalog)
    return checkpointer.store, checkpointer


def serving_options(config: Config):
    """The server settings of ``[serving]``."""
    from consumers.serving import ServingOptions
    from pipeline.serving.requests import Limits

    sv = config.serving
    return ServingOptions(
        token=sv.token,
        max_body_bytes=sv.max_body_bytes,
        max_inflight=sv.max_inflight,
        batch_wait_s=sv.batch_wait_ms / 1000,
        limits=Limits(max_candidates=sv.max_candidates),
    )


def open_serving_server(config: Config, options: WorkerOptions):
    """The scoring/decision API on ``serving.address`` over a new view holder, or None when off.

    Its decision log is attached later (:meth:`~consumers.serving.ServingServer.decisions`), once
    the broker answers.
    """
    port = options.serving_port if options.serving_port is not None else (config.serving.port or None)
    if port is None:
        return None
    from consumers.serving import ServingServer
    from pipeline.serving.view import ViewHolder

    server = ServingServer(ViewHolder(), config.serving.address, port, serving_options(config)).start()
    print(f"serving on {server.url}/v1/ (score, decide, models)", file=sys.stderr)
    return server
