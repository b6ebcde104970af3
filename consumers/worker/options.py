"""How a worker runs (:class:`WorkerOptions`) and what it did (:class:`WorkerReport`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["WorkerOptions", "WorkerReport"]


@dataclass
class WorkerOptions:
    """How one worker process runs (the configuration says what it computes)."""

    idle_exit_s: float | None = None  # exit this long after the last record or rebalance, once assigned
    shutdown_timeout_s: float = 30.0
    hard_exit: bool = False  # os._exit(1) when a shutdown overruns shutdown_timeout_s
    progress: bool = True
    metrics_port: int | None = None  # None: config metrics.port (0 there = off); 0 here: a free port
    serving_port: int | None = None  # None: config serving.port (0 there = off); 0 here: a free port
    commit_timeout_ms: int = 10_000
    lag_every_s: float = 2.0
    catalog: bool = True
    dead_letter_attempts: int = 3
    dead_letter_timeout_s: float = 3.0


@dataclass
class WorkerReport:
    """What a worker run did (``--summary-json`` writes :meth:`to_dict`)."""

    exit_code: int
    reason: str
    worker_id: str
    seconds: float
    records_this_run: int
    summary: dict[str, Any]
    partitions: dict[str, dict[str, int]]
    positions: dict[str, int]
    confirmed_seq: int
    commits: int
    rollbacks: int
    rebalances: int
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
