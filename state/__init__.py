"""Persistence (DESIGN §6): atomic, verified snapshots, the checkpoint cadence, and the DuckDB catalog.

``state.snapshot`` writes and reads snapshots, ``state.checkpoint`` decides when (and writes them
in the background), ``state.catalog`` puts SQL over all of them (imported on its own: it needs DuckDB).
"""

from __future__ import annotations

from state.checkpoint import Checkpointer, SnapshotResult
from state.snapshot import FORMAT_VERSION, SnapshotStore, check_writable

__all__ = ["FORMAT_VERSION", "Checkpointer", "SnapshotResult", "SnapshotStore", "check_writable"]
