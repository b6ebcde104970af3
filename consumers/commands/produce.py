"""``streamlearn produce``: send event files to a Kafka topic, optionally at a fixed rate.

Example::

    streamlearn produce examples/stream.jsonl.gz --topic events --bootstrap 127.0.0.1:9092 --rate 10000

JSONL lines are sent as they are (invalid ones too: the worker dead-letters them); Parquet and CSV
rows are serialised to one JSON object each (null fields left out). ``--key-field`` keys each
record by one of its fields (records of one user stay in one partition); without it kafka-python
spreads them. ``--partitions N`` creates a missing topic with N partitions. ``--now`` replaces each
event's ``ts`` with the time it is sent, for freshness measurements. The sending itself is
:class:`consumers.kafka.KafkaWriter`, which ``streamlearn simulate --to-kafka`` uses too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import orjson

from consumers.commands.common import positive_float, positive_int
from pipeline.errors import ConfigError

if TYPE_CHECKING:  # imported when used: the other commands start without kafka-python
    import pyarrow as pa  # and `streamlearn --help` without pyarrow

    from consumers.kafka import KafkaWriter

__all__ = ["register", "rows_to_json", "run"]


def rows_to_json(batch: pa.RecordBatch) -> list[bytes]:
    """One JSON object per row; null fields are left out and map columns become objects.

    >>> import pyarrow as pa
    >>> rows_to_json(pa.record_batch({"event_id": ["a", "b"], "label": [1, None]}))
    [b'{"event_id":"a","label":1}', b'{"event_id":"b"}']
    """
    out = []
    for row in batch.to_pylist():
        clean = {}
        for k, v in row.items():
            if v is None:
                continue
            if isinstance(v, list) and v and all(isinstance(x, tuple) and len(x) == 2 for x in v):
                v = {str(a): b for a, b in v if b is not None}
            elif isinstance(v, dict):
                v = {a: b for a, b in v.items() if b is not None}
            clean[k] = v
        out.append(orjson.dumps(clean))
    return out


def _keys(values: Sequence[bytes], field: str) -> list[bytes | None]:
    keys = []
    for v in values:
        try:
            obj = orjson.loads(v)
        except orjson.JSONDecodeError:
            keys.append(None)
            continue
        found = obj.get(field) if isinstance(obj, dict) else None
        keys.append(None if found is None else str(found).encode())
    return keys


def file_values(paths: Sequence[str], batch_size: int = 5000) -> Iterator[list[bytes]]:
    """The records of event files as JSON bytes, in file order, ``batch_size`` at a time."""
    from consumers.file_source import FileSource

    for raw in FileSource(paths, batch_size):
        yield list(raw.values) if raw.values is not None else rows_to_json(raw.arrow)


def send_all(writer: KafkaWriter, chunks: Iterable[list[bytes]], key_field: str | None, now: bool) -> int:
    for values in chunks:
        writer.send(values, _keys(values, key_field) if key_field else None, now=now)
    return writer.sent


# --------------------------------------------------------------------------- command line


def add_kafka_target_arguments(p: argparse.ArgumentParser, topic_required: bool = True) -> None:
    """The arguments shared by ``produce`` and ``simulate --to-kafka``."""
    p.add_argument("--topic", required=topic_required, help="topic to send to")
    p.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="bootstrap servers (default: config kafka.bootstrap_servers)"
    )
    p.add_argument(
        "--rate", type=float, metavar="EVENTS_PER_S", help="send at most this many records per second"
    )
    p.add_argument(
        "--partitions", type=int, metavar="N", help="create the topic with N partitions if it is missing"
    )
    p.add_argument("--key-field", metavar="FIELD", help="key each record by this event field (e.g. user_id)")
    p.add_argument("--now", action="store_true", help="replace each event's ts with the time it is sent")
    p.add_argument(
        "--config", metavar="FILE", help="TOML configuration (kafka.bootstrap_servers, kafka.client)"
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="give up (exit 1) when no broker answers within this time (default: 10)",
    )


def open_writer(args: argparse.Namespace) -> KafkaWriter:
    """A :class:`~consumers.kafka.KafkaWriter` for the target arguments, creating the topic when asked."""
    from consumers.kafka import KafkaWriter, ensure_topic, producer_settings
    from pipeline.config import load_config

    config = load_config(args.config)
    bootstrap = args.bootstrap or config.kafka.bootstrap_servers
    client = producer_settings(config.kafka.client)
    if args.partitions is not None:
        if args.partitions < 1:
            raise ConfigError(f"argument --partitions: must be >= 1, got {args.partitions}")
        ensure_topic(bootstrap, args.topic, args.partitions, client, args.connect_timeout)
    return KafkaWriter(bootstrap, args.topic, args.rate, client, args.connect_timeout)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "produce",
        help="send event files (JSONL, Parquet, CSV) to a Kafka topic",
        description="Send the records of event files to a Kafka topic, in file order, optionally paced.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or glob patterns")
    add_kafka_target_arguments(p)
    p.add_argument(
        "--batch-size", type=positive_int, default=5000, metavar="N", help="records read at a time"
    )
    p.set_defaults(func=run)


def quiet_client_logs(args: argparse.Namespace) -> None:
    """kafka-python logs every failed connection attempt; the command's own error says it in one line."""
    if getattr(args, "log_level", "warning").lower() != "debug":
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def run(args: argparse.Namespace) -> int:
    quiet_client_logs(args)
    started = time.monotonic()
    with open_writer(args) as writer:
        sent = send_all(writer, file_values(args.paths, max(1, args.batch_size)), args.key_field, args.now)
    seconds = time.monotonic() - started
    print(
        f"produce: sent {sent:,} records to {args.topic} in {seconds:.1f} s ({sent / max(seconds, 1e-9):,.0f}/s)",
        file=sys.stderr,
    )
    return 0
