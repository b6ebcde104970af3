"""``streamlearn simulate``: write a synthetic interaction stream to JSONL (optionally gzipped) or Parquet.

The stream comes from :class:`pipeline.simulate.Simulator`; the file format follows the suffix of
``--out`` (``.jsonl``, ``.jsonl.gz``, ``.parquet``). Gzip output is byte-for-byte reproducible
(no timestamp or file name in the header), so a seed pins the file.

Example::

    streamlearn simulate --events 100000 --seed 7 --invalid-fraction 0.005 --out examples/stream.jsonl.gz

With ``--to-kafka`` the JSON lines go to a Kafka topic instead of a file (``--topic``, ``--bootstrap``,
``--rate``, ``--partitions``, ``--key-field``, ``--now`` as for ``streamlearn produce``)::

    streamlearn simulate --events 100000 --to-kafka --topic events --bootstrap 127.0.0.1:9092 --rate 10000

Without ``--drift`` the default schedule (:func:`pipeline.simulate.default_drifts`) is scaled to
``--events``; ``--drift none`` gives a stationary stream. ``--feedback delayed`` writes exposures
(label 0) and their clicks as separate outcome records, later by a delay from ``--delay``
(``exponential`` or ``heavy_tailed``, median ``--delay-median-s``), in event-time order::

    streamlearn simulate --events 100000 --feedback delayed --delay heavy_tailed --truth --out /tmp/delayed.parquet

The command also runs on its own as ``python -m consumers.commands.simulate ...``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from consumers.commands.produce import add_kafka_target_arguments, open_writer, quiet_client_logs, send_all
from pipeline.errors import ConfigError
from pipeline.simulation.config import DELAY_KINDS, FEEDBACK_MODES, SimConfig, default_drifts, parse_drift

if TYPE_CHECKING:  # the stream and its writers need numpy and pyarrow: imported where used, not for --help
    from pipeline.simulate import Simulator

__all__ = ["WriteSummary", "main", "register", "run", "write_stream"]

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class WriteSummary:
    """What :func:`write_stream` wrote: valid events (exposures), injected invalid records, wall time,
    and the outcome records of ``--feedback delayed``."""

    path: Path
    events: int
    invalid: int
    seconds: float
    outcomes: int = 0

    @property
    def records(self) -> int:
        return self.events + self.outcomes + self.invalid


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def write_stream(
    sim: Simulator,
    path: str | os.PathLike,
    n_events: int,
    invalid_fraction: float = 0.0,
    include_truth: bool = False,
    chunk_size: int = 10_000,
) -> WriteSummary:
    """Write the first ``n_events`` events of ``sim`` to ``path`` (format by suffix), atomically.

    JSONL gets every kind of invalid record; Parquet only type-valid ones (NaN label, bad
    propensity, unknown event type, null required field, negative position).
    """
    path = Path(path)
    fmt = _format_of(path)
    if fmt is None:
        raise ConfigError(
            f"out must end in one of {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}, got {str(path)!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    start = time.perf_counter()
    try:
        if fmt == "parquet":
            rows, outcomes = _write_parquet(sim, tmp, n_events, invalid_fraction, include_truth, chunk_size)
        else:
            rows, outcomes = _write_jsonl(
                sim, tmp, n_events, invalid_fraction, include_truth, path.name.endswith(".gz")
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return WriteSummary(path, n_events, rows - n_events - outcomes, time.perf_counter() - start, outcomes)


def _write_jsonl(sim, tmp: Path, n_events, invalid_fraction, include_truth, gz: bool) -> tuple[int, int]:
    rows = outcomes = 0
    with open(tmp, "wb") as raw:
        # mtime=0 and no file name in the header keep the .gz reproducible byte for byte
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if gz else raw
        try:
            for chunk in sim.json_chunks(n_events, invalid_fraction, include_truth):
                out.write(b"\n".join(chunk.lines) + b"\n")
                rows += len(chunk.lines)
                outcomes += chunk.n_outcomes
        finally:
            if gz:
                out.close()
    return rows, outcomes


def _write_parquet(sim, tmp: Path, n_events, invalid_fraction, include_truth, chunk_size) -> tuple[int, int]:
    import pyarrow.parquet as pq

    from pipeline.simulation.records import sim_schema
    from pipeline.simulation.stream import count_outcomes

    schema = sim_schema(include_truth, sim.config.feedback)
    rows = outcomes = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in sim.batches(n_events, chunk_size, include_truth, invalid_fraction):
            writer.write_batch(batch)
            rows += batch.num_rows
            outcomes += count_outcomes(batch)
    return rows, outcomes


# --------------------------------------------------------------------------- command line


def register(subparsers) -> None:
    """Add the ``simulate`` subcommand (handler: :func:`run`) to an argparse subparsers object."""
    d = SimConfig()
    p = subparsers.add_parser(
        "simulate",
        help="write a synthetic interaction stream with known drifts",
        description="Write a seeded synthetic interaction stream (JSONL, JSONL.gz or Parquet by --out suffix).",
    )
    p.add_argument(
        "--events",
        type=int,
        default=100_000,
        help="valid events (impressions; exposures with --feedback delayed, whose outcome records "
        "come on top) to write (default 100000)",
    )
    p.add_argument("--out", help="output file: .jsonl, .jsonl.gz or .parquet (unless --to-kafka)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--run-id",
        help=(
            "prefix of every event_id and request_id ('<run-id>-e<n>'): default a fresh random one "
            "per run, so that two runs into one topic do not repeat each other's ids; '' for 'e<n>'"
        ),
    )
    p.add_argument("--users", type=int, default=d.n_users, help=f"number of users (default {d.n_users})")
    p.add_argument(
        "--items", type=int, default=d.n_items, help=f"initial number of items (default {d.n_items})"
    )
    p.add_argument("--candidates", type=int, default=d.n_candidates, help="candidates per request")
    p.add_argument("--slate-size", type=int, default=d.slate_size, help="items shown per request (default 1)")
    p.add_argument(
        "--no-candidates",
        dest="log_candidates",
        action="store_false",
        help="leave out each event's candidates field (the item ids its request chose among)",
    )
    p.add_argument(
        "--drift",
        action="append",
        metavar="SPEC",
        help="kind@event[,span=N][,n=N][,strength=X] with kind in abrupt, gradual, new_items, popularity; "
        "repeatable; 'none' for no drift (default: 4 drifts scaled to --events)",
    )
    p.add_argument("--invalid-fraction", type=float, default=0.0, help="share of injected invalid records")
    p.add_argument("--late-fraction", type=float, default=0.0, help="share of out-of-order (late) events")
    p.add_argument(
        "--truth",
        action="store_true",
        help="add ground-truth columns p_click and p_best (with --feedback delayed also clicked, the "
        "eventual 0/1 outcome of each exposure, and delay_ms, null unless an outcome record follows); "
        "the decoder never reads them as features",
    )
    p.add_argument(
        "--feedback",
        choices=FEEDBACK_MODES,
        default=d.feedback,
        help="joined: each impression's label is its click (default); delayed: exposures with label 0 "
        "and each click as its own outcome record (event_type click, event_id o<n> for exposure e<n>, "
        "same request_id and item_id) --delay later, the whole log in event-time order",
    )
    p.add_argument(
        "--delay",
        choices=DELAY_KINDS,
        default=d.delay,
        help="with --feedback delayed: distribution of a click's delay, both with median --delay-median-s; "
        "heavy_tailed mixes an exponential body with a log-normal tail (--delay-tail-*) "
        f"(default {d.delay})",
    )
    p.add_argument(
        "--delay-median-s",
        type=float,
        default=d.delay_median_s,
        help=f"median delay in seconds, of the whole distribution (default {d.delay_median_s:g})",
    )
    p.add_argument(
        "--delay-tail-fraction",
        type=float,
        default=d.delay_tail_fraction,
        help="heavy_tailed: share of clicks from the log-normal tail, in [0, 0.5) "
        f"(default {d.delay_tail_fraction:g}: 5%% of clicks more than --delay-tail-median-s late)",
    )
    p.add_argument(
        "--delay-tail-median-s",
        type=float,
        default=d.delay_tail_median_s,
        help=f"heavy_tailed: median of the tail in seconds, >= --delay-median-s (default {d.delay_tail_median_s:g} = 3 h)",
    )
    p.add_argument(
        "--delay-tail-sigma",
        type=float,
        default=d.delay_tail_sigma,
        help="heavy_tailed: standard deviation of the log of the tail's delays "
        f"(default {d.delay_tail_sigma:g}; with the other defaults 1%% of clicks come about 11 h late)",
    )
    p.add_argument(
        "--unattributed-fraction",
        type=float,
        default=d.unattributed_fraction,
        help="with --feedback delayed: share of clicks whose outcome record is never written "
        f"(default {d.unattributed_fraction:g})",
    )
    p.add_argument("--to-kafka", action="store_true", help="send the JSON lines to --topic instead of a file")
    add_kafka_target_arguments(p, topic_required=False)
    p.set_defaults(func=run)


def _usage_error(message: str) -> int:
    print(f"streamlearn simulate: error: {message}", file=sys.stderr)
    return 2


def _run_id(args: argparse.Namespace) -> str:
    if getattr(args, "run_id", None) is not None:
        return args.run_id
    import secrets

    return secrets.token_hex(4)


def _drifts(args: argparse.Namespace):
    if not args.drift:
        return default_drifts(args.events, max(1, args.items // 8)) if args.events >= 10 else ()
    if [s.strip().lower() for s in args.drift] == ["none"]:
        return ()
    return tuple(parse_drift(s) for s in args.drift)


def _check_args(args: argparse.Namespace) -> str | None:
    checks = [
        (args.events >= 1, f"argument --events: must be >= 1, got {args.events}"),
        (args.users >= 1, f"argument --users: must be >= 1, got {args.users}"),
        (args.items >= 1, f"argument --items: must be >= 1, got {args.items}"),
        (
            1 <= args.candidates <= args.items,
            f"argument --candidates: must be in [1, --items], got {args.candidates}",
        ),
        (
            1 <= args.slate_size <= args.candidates,
            f"argument --slate-size: must be in [1, --candidates], got {args.slate_size}",
        ),
        (
            0.0 <= args.invalid_fraction < 1.0,
            f"argument --invalid-fraction: must be in [0, 1), got {args.invalid_fraction}",
        ),
        (
            0.0 <= args.late_fraction <= 1.0,
            f"argument --late-fraction: must be in [0, 1], got {args.late_fraction}",
        ),
    ]
    checks += _delay_checks(args)
    if getattr(args, "to_kafka", False):
        checks += [
            (args.topic is not None, "argument --topic: required with --to-kafka"),
            (args.out is None, "argument --out: not allowed with --to-kafka"),
            (args.rate is None or args.rate > 0, f"argument --rate: must be > 0, got {args.rate}"),
        ]
    else:
        checks += [
            (args.out is not None, "argument --out: required (or --to-kafka)"),
            (
                args.out is None or _format_of(Path(args.out)) is not None,
                f"argument --out: must end in .jsonl, .jsonl.gz or .parquet, got {args.out!r}",
            ),
        ]
    return next((msg for ok, msg in checks if not ok), None)


_DELAY_OPTIONS = (
    "delay",
    "delay_median_s",
    "delay_tail_fraction",
    "delay_tail_median_s",
    "delay_tail_sigma",
    "unattributed_fraction",
)
_TAIL_OPTIONS = ("delay_tail_fraction", "delay_tail_median_s", "delay_tail_sigma")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _delay_checks(args: argparse.Namespace) -> list[tuple[bool, str]]:
    """The delay options: in range, and not given where they would be ignored."""
    d = SimConfig()
    changed = [n for n in _DELAY_OPTIONS if getattr(args, n) != getattr(d, n)]
    if args.feedback != "delayed":
        return (
            [(not changed, f"argument {_flag(changed[0])}: only with --feedback delayed")] if changed else []
        )
    tail = [n for n in changed if n in _TAIL_OPTIONS]
    return [
        (args.delay_median_s > 0, f"argument --delay-median-s: must be > 0, got {args.delay_median_s:g}"),
        (
            not tail or args.delay == "heavy_tailed",
            f"argument {_flag(tail[0]) if tail else ''}: only with --delay heavy_tailed",
        ),
        (
            0.0 <= args.delay_tail_fraction < 0.5,
            f"argument --delay-tail-fraction: must be in [0, 0.5), got {args.delay_tail_fraction:g}",
        ),
        (
            args.delay != "heavy_tailed" or args.delay_tail_median_s >= args.delay_median_s,
            f"argument --delay-tail-median-s: must be >= --delay-median-s {args.delay_median_s:g}, "
            f"got {args.delay_tail_median_s:g}",
        ),
        (
            args.delay_tail_sigma > 0,
            f"argument --delay-tail-sigma: must be > 0, got {args.delay_tail_sigma:g}",
        ),
        (
            0.0 <= args.unattributed_fraction < 1.0,
            f"argument --unattributed-fraction: must be in [0, 1), got {args.unattributed_fraction:g}",
        ),
    ]


def run(args: argparse.Namespace) -> int:
    """Handle ``streamlearn simulate``: 0 on success, 2 on a usage error (message names the argument)."""
    problem = _check_args(args)
    if problem:
        return _usage_error(problem)
    try:
        drifts = _drifts(args)
        config = SimConfig(
            seed=args.seed,
            n_users=args.users,
            n_items=args.items,
            n_candidates=args.candidates,
            slate_size=args.slate_size,
            late_fraction=args.late_fraction,
            drifts=drifts,
            run_id=_run_id(args),
            log_candidates=args.log_candidates,
            **{n: getattr(args, n) for n in ("feedback", *_DELAY_OPTIONS)},
        )
    except ConfigError as exc:
        return _usage_error(f"argument --drift: {exc}")
    beyond = [d.spec() for d in drifts if d.at_event >= args.events]
    if beyond:
        return _usage_error(f"argument --drift: {', '.join(beyond)} is at or beyond --events {args.events}")
    schedule = "; ".join(d.spec() for d in config.drifts) or "none"
    from pipeline.simulate import Simulator

    if getattr(args, "to_kafka", False):
        return _to_kafka(args, Simulator(config), schedule)
    summary = write_stream(Simulator(config), args.out, args.events, args.invalid_fraction, args.truth)
    parts = _parts(summary.events, summary.outcomes, summary.invalid, config.feedback == "delayed")
    print(
        f"simulate: wrote {summary.records:,} records ({parts}) "
        f"to {summary.path} in {summary.seconds:.1f} s; seed {args.seed}; run id {config.run_id or 'none'}; "
        f"drifts: {schedule}{_feedback_note(config)}",
        file=sys.stderr,
    )
    return 0


def _parts(events: int, outcomes: int, invalid: int, delayed: bool) -> str:
    """``"N events + M invalid"``, with ``+ K outcomes`` in between in the delayed mode."""
    middle = f" + {outcomes:,} outcomes" if delayed else ""
    return f"{events:,} events{middle} + {invalid:,} invalid"


def _feedback_note(config: SimConfig) -> str:
    if config.feedback != "delayed":
        return ""
    note = f"; delayed feedback: {config.delay} delays, median {config.delay_median_s:g} s"
    if config.delay == "heavy_tailed":
        note += f", tail {config.delay_tail_fraction:g} at median {config.delay_tail_median_s:g} s"
    return note


def _to_kafka(args: argparse.Namespace, sim: Simulator, schedule: str) -> int:
    quiet_client_logs(args)
    start = time.perf_counter()
    outcomes = 0

    def chunks():
        nonlocal outcomes
        for chunk in sim.json_chunks(args.events, args.invalid_fraction, args.truth):
            outcomes += chunk.n_outcomes
            yield chunk.lines

    with open_writer(args) as writer:
        sent = send_all(writer, chunks(), args.key_field, args.now)
    parts = _parts(args.events, outcomes, sent - args.events - outcomes, sim.config.feedback == "delayed")
    print(
        f"simulate: sent {sent:,} records ({parts}) to "
        f"{args.topic} in {time.perf_counter() - start:.1f} s; seed {args.seed}; "
        f"run id {sim.config.run_id or 'none'}; drifts: {schedule}{_feedback_note(sim.config)}",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``simulate`` on its own: ``python -m consumers.commands.simulate --events N --out PATH``."""
    parser = argparse.ArgumentParser(prog="streamlearn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
