"""``streamlearn state``: list, show, query, verify and prune the snapshots of a state directory.

Exit codes: 0 success; 1 a snapshot failed verification, or an unexpected error; 2 a usage error
(bad ``--state-dir``, unknown snapshot, invalid SQL), with a message naming the argument.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.config import load_config
from pipeline.errors import ConfigError, SnapshotError

if TYPE_CHECKING:  # imported in _open_store: `streamlearn state --help` needs no numpy
    from state.snapshot import SnapshotStore

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


class _UsageError(Exception):
    """A bad argument; the message names it (exit code 2)."""


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", metavar="DIR", help="state directory (default: snapshot.dir of the config)"
    )
    common.add_argument("--config", metavar="FILE", help="TOML configuration (for snapshot.dir)")
    common.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p = sub.add_parser(
        "state",
        help="inspect snapshots: list, show, query (SQL), verify, prune",
        description="Inspect the snapshots in a state directory. 'query' runs SQL (DuckDB) over all of them: "
        "tables snapshots, positions, learners, metrics, drift_events, and one view per learner table "
        "(<learner>__<table>; see catalog_tables).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    actions.add_parser("list", parents=[common], help="one line per snapshot")
    show = actions.add_parser(
        "show", parents=[common], help="a snapshot's manifest: positions, learners, files"
    )
    show.add_argument("seq", nargs="?", default="latest", help="snapshot number (default: the newest)")
    query = actions.add_parser("query", parents=[common], help="run SQL over all snapshots")
    query.add_argument("sql", help='e.g. "SELECT learner, events, auc FROM metrics ORDER BY events"')
    verify = actions.add_parser("verify", parents=[common], help="check every file's size and sha256")
    verify.add_argument("seqs", nargs="*", metavar="SEQ", help="snapshots to check (default: all)")
    prune = actions.add_parser("prune", parents=[common], help="remove all but the newest K snapshots")
    prune.add_argument(
        "--keep", type=int, required=True, metavar="K", help="how many snapshots to keep (>= 1)"
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    actions.add_parser("catalog", parents=[common], help="rebuild <state-dir>/catalog.duckdb now")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        store = _open_store(args)
        handler = {
            "list": _list,
            "show": _show,
            "query": _query,
            "verify": _verify,
            "prune": _prune,
            "catalog": _catalog,
        }[args.action]
        return handler(store, args)
    except (_UsageError, ConfigError) as exc:
        print(f"streamlearn state {args.action}: error: {exc}", file=sys.stderr)
        return 2
    except SnapshotError as exc:
        print(f"streamlearn state {args.action}: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the CLI's promise: exit 1 with a message, the traceback in the log
        log.debug("unexpected error", exc_info=True)
        print(
            f"streamlearn state {args.action}: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1


def _open_store(args: argparse.Namespace) -> SnapshotStore:
    from state.snapshot import SnapshotStore

    state_dir = args.state_dir or load_config(args.config).snapshot.dir
    if not state_dir:
        raise _UsageError(
            "--state-dir is required (or set snapshot.dir in the config / STREAMLEARN_SNAPSHOT__DIR)"
        )
    if not os.path.isdir(state_dir):
        raise _UsageError(f"--state-dir {state_dir!r} is not a directory")
    return SnapshotStore(state_dir)


def _seq(store: SnapshotStore, text: str) -> int:
    seqs = store.seqs()
    if text == "latest":
        if not seqs:
            raise _UsageError(f"no snapshots in {store.snapshots_dir}")
        return seqs[-1]
    try:
        seq = int(text)
    except ValueError:
        raise _UsageError(f"SEQ must be a snapshot number or 'latest', got {text!r}") from None
    if seq not in seqs:
        have = ", ".join(str(s) for s in seqs) or "none"
        raise _UsageError(f"no snapshot {seq} in {store.snapshots_dir} (have: {have})")
    return seq


# ------------------------------------------------------------------------------------ actions


def _list(store: SnapshotStore, args) -> int:
    rows = []
    for seq in store.seqs():
        try:
            m = store.read_manifest(seq)
        except SnapshotError as exc:
            rows.append([seq, None, None, None, None, None, str(exc)])
            continue
        learners = ",".join(n for n in m["learners"] if n != "_runner")
        rows.append([seq, m["created_at"], m["events_applied"], m["bytes"], len(m["files"]), learners, "ok"])
    _emit(["seq", "created_at", "events_applied", "bytes", "files", "learners", "status"], rows, args.format)
    return 0


def _show(store: SnapshotStore, args) -> int:
    manifest = store.read_manifest(_seq(store, args.seq))
    if args.format == "json":
        print(json.dumps(_jsonable(manifest), indent=2, sort_keys=True))
        return 0
    rows: list[list[Any]] = [[k, manifest[k]] for k in ("seq", "created_at", "format_version", "config_hash")]
    rows += [["events_applied", manifest["events_applied"]], ["bytes", manifest["bytes"]]]
    rows += [[f"counter {k}", v] for k, v in sorted(manifest["counters"].items())]
    rows += [[f"position {k}", v] for k, v in sorted(manifest["positions"].items())]
    for name, info in manifest["learners"].items():
        parts = [f"kind={info.get('kind') or '-'}"]
        parts += [
            f"{attr}={','.join(sorted(info[attr]))}" for attr in ("tables", "arrays", "tensors") if info[attr]
        ]
        rows.append([f"learner {name}", " ".join(parts)])
    for rel, entry in sorted(manifest["files"].items()):
        rows.append([f"file {rel}", f"{entry['bytes']} bytes sha256 {entry['sha256'][:16]}…"])
    _emit(["key", "value"], rows, args.format)
    return 0


def _query(store: SnapshotStore, args) -> int:
    import duckdb

    from state.catalog import Catalog

    con = Catalog(store.root).connect()
    try:
        rel = con.sql(args.sql)
    except (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException) as exc:
        raise _UsageError(f"invalid SQL query: {exc}") from None
    if rel is None:  # a statement without a result
        return 0
    result = rel.to_arrow_table()  # via Arrow: DuckDB's own fetch needs pytz for time zones
    _emit(result.column_names, [list(r) for r in zip(*(c.to_pylist() for c in result.columns))], args.format)
    return 0


def _verify(store: SnapshotStore, args) -> int:
    seqs = [_seq(store, s) for s in args.seqs] or store.seqs()
    rows, bad = [], 0
    for seq in seqs:
        problems = store.verify(seq)
        bad += bool(problems)
        rows.append([seq, "ok" if not problems else "CORRUPT", "; ".join(problems)])
    _emit(["seq", "status", "problems"], rows, args.format)
    if bad:
        print(f"{bad} of {len(seqs)} snapshots failed verification", file=sys.stderr)
    return 1 if bad else 0


def _prune(store: SnapshotStore, args) -> int:
    if args.keep < 1:
        raise _UsageError(f"--keep must be >= 1, got {args.keep}")
    if args.dry_run:
        removed = store.seqs()[: -args.keep]
    else:
        from state.checkpoint import WriterLock

        with WriterLock(store.root):  # never under a running worker's feet
            removed = store.prune(args.keep)
        _refresh_catalog(store)
    _emit(
        ["seq", "action"], [[s, "would remove" if args.dry_run else "removed"] for s in removed], args.format
    )
    return 0


def _catalog(store: SnapshotStore, args) -> int:
    path = _refresh_catalog(store)
    _emit(["catalog"], [[str(path)]], args.format)
    return 0


def _refresh_catalog(store: SnapshotStore):
    from state.catalog import Catalog

    return Catalog(store.root).refresh()


# ------------------------------------------------------------------------------------ output


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(_jsonable(value))
    return str(value)


def _emit(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    out = sys.stdout
    if fmt == "json":
        json.dump([_jsonable(dict(zip(columns, r))) for r in rows], out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in r] for r in rows)
    else:
        cells = [[_cell(v) for v in r] for r in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(), file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for r in cells:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=out)
