"""The ``[group]`` section: many workers of one consumer group sharing one model (docs/scaling.md).

Kept free of numpy and pyarrow: the configuration imports it before any batch exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import require

__all__ = ["GroupConfig"]


@dataclass(frozen=True)
class GroupConfig:
    """Settings of the shared model (off by default: each worker then keeps its own model).

    Parameters
    ----------
    enabled
        Share every worker's model updates through a Kafka topic of deltas, so that the group
        holds one model; needs learners whose state is a sum (docs/scaling.md lists them).
    updates_topic
        The model-updates topic (one partition: its order is the group's one order of updates);
        default ``<first topic>.updates``. Created on first use.
    publish_every_ms
        How often a worker publishes the delta of what it learned since its last one. Shorter
        means fresher peers and more, smaller messages.
    publish_every_events
        Also publish after this many events of its own (0: by time only). It bounds how stale a
        peer's view gets in events, whatever the rate: a worker draining a backlog at 70,000
        events/s would otherwise learn 70,000 events between two looks at its peers' updates,
        which costs FTRL about a point of AUC.
    max_delta_bytes
        Largest delta message; a worker publishes early when its next one would outgrow it, and
        the topic is created with room for it.
    bootstrap_dirs
        State directories of other workers (a shared volume, say): a worker that starts without
        a snapshot of its own loads the newest of theirs and follows the topic from there instead
        of replaying the topic from its start.
    read_back_timeout_ms
        How long a snapshot or a hand-over may wait to read the worker's own deltas back.
    """

    enabled: bool = False
    updates_topic: str = ""
    publish_every_ms: int = 1000
    publish_every_events: int = 10_000
    max_delta_bytes: int = 8 << 20
    bootstrap_dirs: tuple[str, ...] = ()
    read_back_timeout_ms: int = 15_000

    def validate(self) -> None:
        require(
            self.publish_every_ms >= 10,
            "group.publish_every_ms",
            self.publish_every_ms,
            "an integer >= 10",
        )
        require(
            self.publish_every_events >= 0,
            "group.publish_every_events",
            self.publish_every_events,
            "an integer >= 0 (0 = by time only)",
        )
        require(
            (1 << 16) <= self.max_delta_bytes <= (64 << 20),
            "group.max_delta_bytes",
            self.max_delta_bytes,
            "an integer in [65536, 67108864]",
        )
        require(
            self.read_back_timeout_ms >= 100,
            "group.read_back_timeout_ms",
            self.read_back_timeout_ms,
            "an integer >= 100",
        )
