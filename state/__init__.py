"""Persistence (docs/design.md §6): atomic, verified snapshots, the checkpoint cadence, and the DuckDB catalog.

``state.snapshot`` writes and reads snapshots, ``state.checkpoint`` decides when (and writes them
in the background), ``state.catalog`` puts SQL over all of them (imported on its own: it needs DuckDB).
"""

from __future__ import annotations

import importlib

# Names are imported on first use (PEP 562): the checkpointer needs the runner (numpy, pyarrow),
# `streamlearn state list` only the snapshot store.
_WHERE = {
    "Checkpointer": "checkpoint",
    "SnapshotResult": "checkpoint",
    "FORMAT_VERSION": "snapshot",
    "SnapshotStore": "snapshot",
    "check_writable": "snapshot",
}

__all__ = ["FORMAT_VERSION", "Checkpointer", "SnapshotResult", "SnapshotStore", "check_writable"]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'state' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"state.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
