"""Persistence (docs/design.md §6): atomic, verified snapshots, the checkpoint cadence, and the DuckDB catalog.

``state.snapshot`` writes and reads snapshots, ``state.checkpoint`` decides when (and writes them
in the background), ``state.catalog`` puts SQL over all of them (imported on its own: it needs DuckDB).
"""

from __future__ import annotations

from pipeline.lazy import lazy_exports

# Names are imported on first use (PEP 562): the checkpointer needs the runner (numpy, pyarrow),
# `streamlearn state list` only the snapshot store.
_EXPORTS = {
    "checkpoint": ("Checkpointer", "SnapshotResult"),
    "snapshot": ("FORMAT_VERSION", "SnapshotStore", "check_writable"),
}

__all__ = ["FORMAT_VERSION", "Checkpointer", "SnapshotResult", "SnapshotStore", "check_writable"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
