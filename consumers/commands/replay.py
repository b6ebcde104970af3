"""``streamlearn replay``: run the prequential pipeline over logged event files, no Kafka needed."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from consumers.commands.common import add_config_arguments, config_from_args, positive_int, write_json
from pipeline.errors import InputError

if TYPE_CHECKING:  # imported in run(): `streamlearn --help` needs none of numpy, pyarrow, river
    from consumers.file_source import FileSource
    from pipeline.runner import Runner

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay event files (JSONL, JSONL.gz, Parquet, CSV) through the learners",
        description="Replay logged events through every configured learner, prequentially (predict, "
        "evaluate, then learn), and print windowed metrics per learner. With --state-dir the run "
        "snapshots its state and resumes from the newest valid snapshot after a stop or crash.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or glob patterns")
    add_config_arguments(p)
    p.add_argument(
        "--dead-letter",
        metavar="FILE",
        help="JSONL file for invalid records (default: config dead_letter.path)",
    )
    p.add_argument(
        "--format", choices=("auto", "jsonl", "parquet", "csv"), help="input format (default: by file suffix)"
    )
    p.add_argument("--limit", type=positive_int, metavar="N", help="stop after N records")
    p.add_argument("--start-at", type=positive_int, default=0, metavar="N", help="skip the first N records")
    p.add_argument("--state-dir", metavar="DIR", help="snapshot state here and resume from it")
    p.add_argument(
        "--snapshot-every", type=positive_int, metavar="N", help="snapshot every N events (with --state-dir)"
    )
    p.add_argument("--summary-json", metavar="FILE", help="also write the closing summary as JSON")
    p.add_argument("--report", metavar="DIR", help="write PNG plots and an index.html about the run into DIR")
    p.add_argument(
        "--drift-points",
        type=_event_list,
        default=(),
        metavar="N,N,...",
        help="known drift points (event indices, e.g. a simulated stream's) to mark in the report",
    )
    p.add_argument(
        "--metrics-port",
        type=positive_int,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port during the replay (0 picks a free one)",
    )
    p.add_argument("--no-progress", action="store_true", help="do not print the progress line")
    p.set_defaults(func=run)


def _event_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated event indices, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"event indices must be >= 0, got {text!r}")
    return values


def _progress_extra(runner: Runner) -> str:
    parts = []
    for name, wm in runner.metrics.items():
        if wm.seen:
            auc = wm.get()["auc"]
            parts.append(f"AUC {name} {auc:.3f}" if auc == auc else f"AUC {name} n/a")
    return ", ".join(parts[:3])


def run(args: argparse.Namespace) -> int:
    from consumers.file_dead_letter import FileDeadLetterSink
    from consumers.file_source import FileSource
    from consumers.progress import Progress, format_summary
    from consumers.stack import build_stack

    extra: dict = {}
    if args.format:
        extra["source"] = {"format": args.format}
    if args.state_dir:
        extra["snapshot"] = {"dir": args.state_dir}
        if args.snapshot_every is not None:
            extra["snapshot"]["every_events"] = args.snapshot_every
    config = config_from_args(args, extra)
    source = FileSource(args.paths, config.source.batch_size, config.source.format, args.start_at)
    sink = FileDeadLetterSink(args.dead_letter or config.dead_letter.path)
    serve_metrics = args.metrics_port is not None or bool(config.metrics.port)
    checkpointer = _open_checkpointer(config) if config.snapshot.dir else None
    stack = build_stack(
        config,
        dead_letters=sink,
        metrics=serve_metrics,
        report_every=min(config.evaluation.report_every, 2000) if args.report else None,
        checkpointer=checkpointer,
    )
    runner, recorder = stack.runner, stack.recorder
    if checkpointer is not None:
        _resume(checkpointer, runner, source)
    server = None
    if stack.metrics is not None:
        from consumers.http_server import start_ops_server

        server = start_ops_server(stack.metrics, config, args.metrics_port)
        server.set_ready(True)

    stop = {"signal": None}

    def _stop(signum, frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    if checkpointer is not None and hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda s, f: checkpointer.request())
    progress = Progress(enabled=config.source.progress and not args.no_progress)
    started = time.perf_counter()
    read = 0
    clean = False
    broken: InputError | None = None
    try:
        try:
            batches = iter(source)
            for raw in batches:
                result = runner.process(raw)
                read += result.records
                c = runner.counters
                where = f"{os.path.basename(source.current_file or '')} #{result.positions.get(source.current_file, 0):,}"
                progress.update(
                    c["records"],
                    c["applied"],
                    c["dead_letters"],
                    where,
                    lambda: _progress_extra(runner),
                    duplicates=c["duplicates"],
                )
                if stop["signal"] is not None or (args.limit is not None and read >= args.limit):
                    break
        except InputError as exc:
            # every batch before the damage was applied whole: snapshot them, then report it
            broken = exc
        clean = True
        c = runner.counters
        progress.update(
            c["records"],
            c["applied"],
            c["dead_letters"],
            "done",
            _progress_extra(runner),
            force=True,
            duplicates=c["duplicates"],
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        progress.close()
        sink.close()
        if server is not None:
            server.stop()
        if checkpointer is not None:
            try:
                # Only a batch boundary is a consistent state: after an exception mid-batch the
                # newest snapshot (positions and state together) stays the truth.
                if clean:
                    checkpointer.final(runner)
            finally:
                checkpointer.close()
    summary = runner.summary(time.perf_counter() - started)
    summary["records_this_run"] = read
    summary["blank_lines"] = source.blank_lines
    summary["positions"] = runner.positions
    print(format_summary(summary))
    if sink.written:
        print(f"\ndead letters written to {sink.path}")
    if args.summary_json:
        write_json(args.summary_json, summary)
    if recorder is not None:
        from pipeline.report import write_report

        page = write_report(
            args.report,
            recorder.data(summary),
            title=f"streamlearn replay: {', '.join(args.paths)}",
            truth=args.drift_points,
        )
        print(f"report written to {page}")
    if broken is not None:
        raise broken
    if stop["signal"] is not None:
        print(f"stopped by signal {signal.Signals(stop['signal']).name}", file=sys.stderr)
        return 130
    return 0


def _open_checkpointer(config):
    from state.checkpoint import Checkpointer

    return Checkpointer.from_config(config)


def _resume(checkpointer, runner: Runner, source: FileSource) -> None:
    manifest = checkpointer.restore(runner)
    if manifest is not None:
        source.seek(runner.positions)
        print(
            f"resumed from snapshot {manifest['seq']} ({runner.counters['applied']:,} events applied)",
            file=sys.stderr,
        )
        for note in checkpointer.restore_notes:
            print(f"  {note}", file=sys.stderr)
