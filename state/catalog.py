"""SQL over the model's history: a DuckDB catalog of every snapshot in a state directory.

Tables and views (``snapshot_seq`` says which snapshot a row came from):

``snapshots``
    one row per snapshot from its manifest: seq, created_at, events_applied, bytes, status, …
``positions``
    source positions per snapshot (``source``, ``position``).
``learners``
    learner name, kind, metadata (JSON) and the names of its tables, arrays and tensors.
``metrics``
    the metric history (windowed AUC, logloss, calibration, CTR per learner every
    ``evaluation.report_every`` events), including snapshots already pruned.
``drift_events``
    drift alarms (``ts_ms, events, signal, detector, score``).
``<learner>__<table>``
    each learner's tables (vocabularies, arm statistics, …) across snapshots, e.g.
    ``ftrl__vocab`` or ``_runner__features``; ``catalog_tables`` lists them.

:meth:`Catalog.refresh` writes ``<state_dir>/catalog.duckdb`` (built aside, then renamed, so a
reader never sees half a catalog and never blocks the writer); :meth:`Catalog.connect` builds the
same objects in memory, which is what the CLI queries.

Examples
--------
>>> import tempfile
>>> from pipeline.learners.base import StateBundle
>>> from state.snapshot import SnapshotStore
>>> store = SnapshotStore(tempfile.mkdtemp()); store.prepare()
>>> vocab = pa.table({"item": ["a", "b"], "count": [3, 1]})
>>> rows = [{"events": 100, "event_ts_ms": 1, "learner": "ftrl", "auc": 0.75}]
>>> _ = store.write({"ftrl": StateBundle(tables={"vocab": vocab})}, positions={}, events_applied=100,
...                 config_hash="h", history=rows)
>>> con = Catalog(store.root).connect()
>>> con.sql("SELECT snapshot_seq, item, count FROM ftrl__vocab ORDER BY item").fetchall()
[(1, 'a', 3), (1, 'b', 1)]
>>> con.sql("SELECT learner, events, auc FROM metrics").fetchall()
[('ftrl', 100, 0.75)]
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import SnapshotError
from state.history import DRIFT_FILE, DRIFT_SCHEMA, METRICS_FILE, METRICS_SCHEMA
from state.snapshot import SnapshotStore

__all__ = ["CATALOG_FILE", "Catalog"]

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.duckdb"

_SNAPSHOT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("format_version", pa.int64()),
        ("config_hash", pa.string()),
        ("events_applied", pa.int64()),
        ("records", pa.int64()),
        ("bytes", pa.int64()),
        ("files", pa.int64()),
        ("status", pa.string()),
    ]
)
_POSITION_SCHEMA = pa.schema(
    [("snapshot_seq", pa.int64()), ("source", pa.string()), ("position", pa.int64())]
)
_LEARNER_SCHEMA = pa.schema(
    [
        ("snapshot_seq", pa.int64()),
        ("learner", pa.string()),
        ("kind", pa.string()),
        ("meta", pa.string()),
        ("tables", pa.list_(pa.string())),
        ("arrays", pa.list_(pa.string())),
        ("tensors", pa.list_(pa.string())),
    ]
)
_INDEX_SCHEMA = pa.schema(
    [("name", pa.string()), ("learner", pa.string()), ("table_name", pa.string()), ("snapshots", pa.int64())]
)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _readable(path: Path) -> bool:
    """Cheap integrity check for the catalog: the Parquet footer parses (restore verifies fully)."""
    try:
        pq.read_metadata(path)
        return True
    except (OSError, pa.ArrowException) as exc:
        log.warning("catalog skips unreadable %s: %s", path, exc)
        return False


class Catalog:
    """DuckDB views over all snapshots in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike):
        self.store = SnapshotStore(state_dir)
        self.root = self.store.root
        self.path = self.root / CATALOG_FILE

    # ------------------------------------------------------------------------------ inventory
    def _inventory(self) -> dict[str, Any]:
        snaps, positions, learners = [], [], []
        tables: dict[tuple[str, str], list[tuple[int, Path]]] = defaultdict(list)
        history: dict[str, list[Path]] = {METRICS_FILE: [], DRIFT_FILE: []}
        for seq in self.store.seqs():
            base = self.store.path(seq)
            try:
                m = self.store.read_manifest(seq)
            except SnapshotError as exc:
                snaps.append({"seq": seq, "status": str(exc)})
                continue
            counters = m.get("counters", {})
            snaps.append(
                {
                    "seq": seq,
                    "created_at": datetime.fromisoformat(m["created_at"]),
                    "format_version": m["format_version"],
                    "config_hash": m["config_hash"],
                    "events_applied": m["events_applied"],
                    "records": counters.get("records"),
                    "bytes": m.get("bytes"),
                    "files": len(m["files"]),
                    "status": "ok",
                }
            )
            positions += [
                {"snapshot_seq": seq, "source": k, "position": v} for k, v in m["positions"].items()
            ]
            for name, info in m["learners"].items():
                learners.append(
                    {
                        "snapshot_seq": seq,
                        "learner": name,
                        "kind": info.get("kind", ""),
                        "meta": json.dumps(info.get("meta", {}), sort_keys=True),
                        **{k: sorted(info.get(k, {})) for k in ("tables", "arrays", "tensors")},
                    }
                )
                for tname, rel in info.get("tables", {}).items():
                    if _readable(base / rel):
                        tables[(name, tname)].append((seq, base / rel))
            for fname in history:
                if (base / fname).exists() and _readable(base / fname):
                    history[fname].append(base / fname)
        if self.store.history_dir.is_dir():
            for fname, paths in history.items():
                archived = sorted(self.store.history_dir.glob(f"*.{fname}"))
                paths[:0] = [p for p in archived if _readable(p)]
        return {
            "snapshots": snaps,
            "positions": positions,
            "learners": learners,
            "tables": tables,
            "history": history,
        }

    # ------------------------------------------------------------------------------ building
    def build(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """Create every table and view in ``con``; returns their names."""
        inv = self._inventory()
        names = []
        for name, rows, schema in (
            ("snapshots", inv["snapshots"], _SNAPSHOT_SCHEMA),
            ("positions", inv["positions"], _POSITION_SCHEMA),
            ("learners", inv["learners"], _LEARNER_SCHEMA),
        ):
            self._materialise(con, name, pa.Table.from_pylist(rows, schema=schema))
            names.append(name)
        keys = {METRICS_FILE: ("learner", "events"), DRIFT_FILE: ("ts_ms", "events", "signal", "detector")}
        for fname, schema in ((METRICS_FILE, METRICS_SCHEMA), (DRIFT_FILE, DRIFT_SCHEMA)):
            view = fname.removesuffix(".parquet")
            self._history_view(con, view, inv["history"][fname], schema, keys[fname])
            names.append(view)
        index = []
        taken = {*names, "catalog_tables"}
        for (learner, tname), files in sorted(inv["tables"].items()):
            view = re.sub(r"[^a-z0-9_]+", "_", f"{learner}__{tname}".lower())
            base, i = view, 1
            while view in taken:
                i += 1
                view = f"{base}_{i}"
            taken.add(view)
            union = " UNION ALL BY NAME ".join(
                f"SELECT {seq}::BIGINT AS snapshot_seq, * FROM read_parquet({_literal(p)})"
                for seq, p in files
            )
            con.execute(f"CREATE OR REPLACE VIEW {_ident(view)} AS {union}")
            index.append({"name": view, "learner": learner, "table_name": tname, "snapshots": len(files)})
            names.append(view)
        self._materialise(con, "catalog_tables", pa.Table.from_pylist(index, schema=_INDEX_SCHEMA))
        return [*names, "catalog_tables"]

    @staticmethod
    def _materialise(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
        con.register("_incoming", table)
        try:
            con.execute(f"CREATE OR REPLACE TABLE {_ident(name)} AS SELECT * FROM _incoming")
        finally:
            con.unregister("_incoming")

    def _history_view(
        self, con, view: str, files: list[Path], schema: pa.Schema, key: tuple[str, ...]
    ) -> None:
        if not files:
            empty = schema.append(pa.field("snapshot_seq", pa.int64())).empty_table()
            self._materialise(con, view, empty)
            return
        # A restore from an older snapshot replays events whose rows a newer (skipped) snapshot
        # already holds: keep one row per key, from the newest snapshot.
        listing = ", ".join(_literal(p) for p in files)
        partition = ", ".join(_ident(k) for k in key)
        con.execute(f"DROP TABLE IF EXISTS {_ident(view)}")
        con.execute(
            f"CREATE OR REPLACE VIEW {_ident(view)} AS SELECT * EXCLUDE (_rank) FROM ("
            f"SELECT *, row_number() OVER (PARTITION BY {partition} ORDER BY snapshot_seq DESC) AS _rank "
            f"FROM read_parquet([{listing}], union_by_name = true)) WHERE _rank = 1 ORDER BY {partition}"
        )

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection holding the catalog (no file, no lock)."""
        con = duckdb.connect(":memory:")
        self.build(con)
        return con

    def refresh(self) -> Path:
        """Rebuild ``<state_dir>/catalog.duckdb`` (atomically replaced); returns its path."""
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            con = duckdb.connect(str(tmp))
            try:
                self.build(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            Path(str(tmp) + ".wal").unlink(missing_ok=True)
        return self.path
