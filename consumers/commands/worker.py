"""``streamlearn worker``: consume a Kafka consumer group and keep the models fresh, exactly once in effect.

Example::

    streamlearn worker --config streamlearn.toml --state-dir state/ --metrics-port 9108

SIGTERM or SIGINT: finish the batch, snapshot, commit, leave the group, exit 0 (1 when the final
snapshot could not be committed; a watchdog exits 1 after ``--shutdown-timeout`` seconds).
SIGUSR1: snapshot and commit after the current batch; SIGUSR2: print every thread's stack to stderr. ``--idle-exit N`` exits after N seconds
without records (drain, then exit). How offsets and snapshots fit together: :mod:`consumers.worker`.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys

from consumers.commands.common import add_config_arguments, config_from_args, positive_int, write_json
from consumers.progress import format_summary

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="consume Kafka topics and keep the learners fresh (exactly-once effect on state)",
        description="A long-lived consumer-group member: micro-batches from Kafka through every configured "
        "learner, snapshots with the offsets inside, commits after each snapshot, dead letters to "
        "<topic>.dlq, /metrics /healthz /readyz.",
    )
    add_config_arguments(p)
    p.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (config kafka.bootstrap_servers)"
    )
    p.add_argument(
        "--topic", action="append", metavar="TOPIC", help="topic to consume, repeatable (config kafka.topics)"
    )
    p.add_argument("--group", metavar="ID", help="consumer group id (config kafka.group_id)")
    p.add_argument("--state-dir", metavar="DIR", help="snapshot directory (config snapshot.dir; required)")
    p.add_argument("--snapshot-every", type=positive_int, metavar="N", help="snapshot every N records")
    p.add_argument(
        "--metrics-port",
        type=positive_int,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (0 picks a free one; default: config metrics.port)",
    )
    p.add_argument(
        "--serving-port",
        type=positive_int,
        metavar="PORT",
        help="serve /v1/score, /v1/decide and /v1/models on this port (0 picks a free one; default: config serving.port, 0 = off)",
    )
    p.add_argument(
        "--idle-exit", type=float, metavar="SECONDS", help="exit (after a final snapshot) when idle this long"
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest a graceful shutdown may take before the process exits 1 (default 30)",
    )
    p.add_argument("--summary-json", metavar="FILE", help="write what the run did as JSON on exit")
    p.add_argument("--no-progress", action="store_true", help="do not print the progress line")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict:
    extra: dict = {}
    kafka = {}
    if args.bootstrap:
        kafka["bootstrap_servers"] = args.bootstrap
    if args.topic:
        kafka["topics"] = list(args.topic)
    if args.group:
        kafka["group_id"] = args.group
    if kafka:
        extra["kafka"] = kafka
    snapshot = {}
    if args.state_dir:
        snapshot["dir"] = args.state_dir
    if args.snapshot_every is not None:
        snapshot["every_events"] = args.snapshot_every
    if snapshot:
        extra["snapshot"] = snapshot
    return extra


def run(args: argparse.Namespace) -> int:
    from consumers.worker import Worker, WorkerOptions

    if args.idle_exit is not None and args.idle_exit <= 0:
        print(
            f"streamlearn worker: error: argument --idle-exit: must be > 0, got {args.idle_exit}",
            file=sys.stderr,
        )
        return 2
    if args.shutdown_timeout <= 0:
        print(
            f"streamlearn worker: error: argument --shutdown-timeout: must be > 0, got {args.shutdown_timeout}",
            file=sys.stderr,
        )
        return 2
    config = config_from_args(args, _overrides(args))
    options = WorkerOptions(
        idle_exit_s=args.idle_exit,
        shutdown_timeout_s=args.shutdown_timeout,
        hard_exit=True,
        progress=not args.no_progress,
        metrics_port=args.metrics_port,
        serving_port=args.serving_port,
    )
    worker = Worker(config, options)

    def _stop(signum, frame):
        worker.stop(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    if hasattr(signal, "SIGUSR1"):
        old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda s, f: worker.request_snapshot())
    if hasattr(signal, "SIGUSR2"):  # a stuck worker can be asked where every thread is
        faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        report = worker.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if report.summary:
        print(format_summary(report.summary), file=sys.stderr)
    print(
        f"worker {report.worker_id}: {report.reason}; snapshot {report.confirmed_seq} committed, "
        f"{report.commits} commits, {report.rebalances} rebalances, {report.rollbacks} rollbacks",
        file=sys.stderr,
    )
    if args.summary_json:
        write_json(args.summary_json, report.to_dict())
    return report.exit_code
