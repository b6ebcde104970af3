"""The history a snapshot carries: metric rows and drift events since the previous snapshot.

Both are stored as Parquet with a fixed schema (so the catalog can query them even when a
snapshot holds no rows) plus ``snapshot_seq``; keys a row has beyond the schema are kept as extra
columns.

Examples
--------
>>> from state.history import DRIFT_SCHEMA, METRICS_SCHEMA
>>> t = history_table([{"events": 100, "learner": "ftrl", "auc": 0.7, "note": "x"}], METRICS_SCHEMA, seq=3)
>>> t.column_names
['events', 'event_ts_ms', 'learner', 'auc', 'logloss', 'calibration', 'ctr', 'n', 'note', 'snapshot_seq']
>>> t.column("snapshot_seq").to_pylist(), history_table([], DRIFT_SCHEMA, seq=3).num_rows
([3], 0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use: `streamlearn state list` reads manifests only
    import pyarrow as pa

    METRICS_SCHEMA: pa.Schema
    DRIFT_SCHEMA: pa.Schema

__all__ = ["DRIFT_FILE", "DRIFT_SCHEMA", "HISTORY_FILES", "METRICS_FILE", "METRICS_SCHEMA", "history_table"]

METRICS_FILE = "metrics.parquet"
DRIFT_FILE = "drift_events.parquet"
HISTORY_FILES = (METRICS_FILE, DRIFT_FILE)

# The schemas are built on first use (PEP 562 __getattr__ below): field names and pyarrow type names.
_SCHEMAS = {
    #: one row per learner every ``evaluation.report_every`` events (``Runner.take_history``)
    "METRICS_SCHEMA": (
        ("events", "int64"),
        ("event_ts_ms", "int64"),
        ("learner", "string"),
        ("auc", "float64"),
        ("logloss", "float64"),
        ("calibration", "float64"),
        ("ctr", "float64"),
        ("n", "int64"),
    ),
    #: one row per drift alarm
    "DRIFT_SCHEMA": (
        ("ts_ms", "int64"),
        ("events", "int64"),
        ("signal", "string"),
        ("detector", "string"),
        ("score", "float64"),
    ),
}


def __getattr__(name: str):
    fields = _SCHEMAS.get(name)
    if fields is None:
        raise AttributeError(f"module 'state.history' has no attribute {name!r}")
    import pyarrow as pa

    value = pa.schema([(field, getattr(pa, kind)()) for field, kind in fields])
    globals()[name] = value
    return value


def history_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, seq: int) -> pa.Table:
    """``rows`` as a table with ``schema``'s columns first (typed even when empty), extra keys kept."""
    import pyarrow as pa

    table = pa.Table.from_pylist(list(rows)) if rows else pa.table({})
    columns, fields = [], []
    for f in schema:
        col = (
            table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(rows), f.type)
        )
        columns.append(col)
        fields.append(f)
    for name in table.column_names:
        if name not in schema.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    columns.append(pa.array([seq] * len(rows), pa.int64()))
    fields.append(pa.field("snapshot_seq", pa.int64()))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
