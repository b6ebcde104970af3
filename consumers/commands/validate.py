"""``streamlearn validate``: report every invalid record in event files and why; learns nothing."""

from __future__ import annotations

import argparse
import json
import sys

from consumers.commands.common import positive_int
from pipeline.config import load_config

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check event files against the event schema and list every invalid record",
        description="Decode and validate event files exactly as replay and the worker do, print one line per "
        "invalid record (origin, reason, detail) and a count per reason. Learns nothing.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or glob patterns")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (for the [events] rules)")
    p.add_argument("--format", choices=("auto", "jsonl", "parquet", "csv"), default="auto")
    p.add_argument("--output", choices=("text", "json"), default="text", help="one line per invalid record")
    p.add_argument(
        "--max-report", type=positive_int, default=None, metavar="N", help="print at most N records"
    )
    p.add_argument("--strict", action="store_true", help="exit with 1 when any record is invalid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consumers.file_source import FileSource  # here, not at the top: `--help` needs no pyarrow
    from pipeline.events import EventRules, attach_origins, decode_arrow, decode_json

    config = load_config(args.config)
    ev = config.events
    rules = EventRules.from_config(ev)
    source = FileSource(args.paths, config.source.batch_size, args.format)
    total = invalid = printed = 0
    by_reason: dict[str, int] = {}
    for raw in source:
        if raw.arrow is not None:
            _, dead = decode_arrow(raw.arrow, rules)
        else:
            _, dead = decode_json(raw.values, rules)
        total += len(raw)
        invalid += len(dead)
        for d in attach_origins(dead, raw.origin):
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
            if args.max_report is None or printed < args.max_report:
                printed += 1
                if args.output == "json":
                    print(json.dumps({"origin": d.origin, "reason": d.reason, "detail": d.detail}))
                else:
                    where = ":".join(str(v) for v in d.origin.values())
                    print(f"{where}: {d.reason}: {d.detail}")
    summary = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())) or "none"
    print(f"{total:,} records, {total - invalid:,} valid, {invalid:,} invalid ({summary})", file=sys.stderr)
    return 1 if (args.strict and invalid) else 0
