"""Kafka worker throughput and freshness, beside a bare kafka-python consumer loop in the same run.

1. A real single-node broker (the test harness) gets a topic pre-filled with ``--events``
   simulated events (default 1,000,000, JSON, ``--partitions`` partitions), stamped with their
   send time as event time.
2. **bare loop**: a kafka-python ``KafkaConsumer`` with the worker's client settings that only
   counts records, from the first record to the last.
3. **worker drain**: ``streamlearn worker`` (in process, default learner ``ftrl``, default
   snapshot cadence, dead-letter producer, metrics) drains the same topic; events/s from its first
   batch to its last, and freshness (apply time − event time) of every applied event.
4. **steady 10k/s**: ``streamlearn produce --rate 10000 --now`` (a separate process) feeds a second
   topic for ``--steady-seconds`` while the worker consumes it live; p50/p99 freshness there is the
   latency of the pipeline (event times are send times).

Usage: ``python benchmarks/kafka_worker.py [--events N] [--steady-seconds S]``; writes
``benchmarks/results/kafka_worker.json`` and prints a markdown table. Targets (issue 4): worker
events/s >= 50 % of the bare loop's; p99 freshness < 2 s at a steady 10,000 events/s.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import peak_rss_mb, save, table

from consumers.kafka import KafkaSource, KafkaWriter, consumer_settings
from consumers.worker import Worker, WorkerOptions
from pipeline.config import load_config
from pipeline.simulate import SimConfig, Simulator
from tests.kafka.broker import REPO_ROOT, KafkaBroker


class FreshnessProbe:
    """A runner observer: per applied event, apply time − event time; first and last batch times."""

    def __init__(self):
        self.lags: list[np.ndarray] = []
        self.first: float | None = None
        self.last: float | None = None
        self.applied = 0

    def on_batch(self, runner, result) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now - result.durations.get("total", 0.0)
        self.last = now
        if result.applied:
            self.applied += result.applied
            self.lags.append((result.applied_at_ms - result.events.ts) / 1000.0)

    def percentiles(self) -> dict:
        lags = np.concatenate(self.lags) if self.lags else np.zeros(0)
        if not len(lags):
            return {}
        return {
            "freshness_p50_s": float(np.percentile(lags, 50)),
            "freshness_p99_s": float(np.percentile(lags, 99)),
        }


def _config(bootstrap: str, topic: str, group: str, state_dir: Path, client: dict | None = None):
    kafka = {"bootstrap_servers": bootstrap, "topics": [topic], "group_id": group, "client": client or {}}
    return load_config(
        overrides={"source": {"progress": False}, "snapshot": {"dir": str(state_dir)}, "kafka": kafka},
        environ={},
    )


def prefill(bootstrap: str, topic: str, n: int, seed: int) -> dict:
    started = time.perf_counter()
    sim = Simulator(SimConfig(seed=seed, log_candidates=False))  # an interaction log, as measured before
    with KafkaWriter(bootstrap, topic, client={"acks": 1, "linger_ms": 20}) as writer:
        for chunk in sim.json_chunks(n):
            writer.send(chunk.lines, now=True)  # event time = send time: freshness = time in the backlog
    seconds = time.perf_counter() - started
    return {
        "case": f"produce {n:,} events (kafka-python producer)",
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
    }


def bare_loop(bootstrap: str, topic: str, n: int, config, label: str = "") -> dict:
    # the worker's source builds and subscribes the KafkaConsumer (same settings); the loop then
    # polls kafka-python's consumer directly and only counts
    source = KafkaSource(
        topic,
        bootstrap,
        f"bare-{time.monotonic_ns()}",
        max_records=config.kafka.max_poll_records,
        client_kwargs=consumer_settings(config.kafka.client),
        auto_offset_reset="earliest",
    ).open()
    consumer = source.consumer
    count, first = 0, None
    try:
        while count < n:
            for records in consumer.poll(timeout_ms=500).values():
                if first is None:
                    first = time.perf_counter()
                count += len(records)
        seconds = time.perf_counter() - first
    finally:
        source.close()
    return {
        "case": f"bare kafka-python consumer loop (counts records){label}",
        "events": count,
        "seconds": seconds,
        "events_per_s": count / seconds,
    }


def worker_drain(
    bootstrap: str, topic: str, n: int, state_dir: Path, client: dict | None = None, label: str = ""
) -> dict:
    probe = FreshnessProbe()
    worker = Worker(
        _config(bootstrap, topic, f"drain-{time.monotonic_ns()}", state_dir, client),
        WorkerOptions(idle_exit_s=3.0, progress=False),
        observers=[probe],
    )
    report = worker.run()
    seconds = probe.last - probe.first
    applied = report.summary["applied"]
    assert applied == n, f"the worker applied {applied} of {n} events"
    return {
        "case": f"streamlearn worker drain (ftrl, snapshots, commits){label}",
        "events": applied,
        "seconds": seconds,
        "events_per_s": applied / seconds,
        "snapshots_committed": report.commits,
        **probe.percentiles(),
        "note": "freshness of a backlog: how long events waited in the pre-filled topic",
    }


def steady(bootstrap: str, topic: str, rate: int, seconds: float, seed: int, tmp: Path) -> dict:
    n = int(rate * seconds)
    events = tmp / "steady.jsonl"
    with open(events, "wb") as fh:
        for chunk in Simulator(SimConfig(seed=seed + 1, log_candidates=False)).json_chunks(n):
            fh.write(b"\n".join(chunk.lines) + b"\n")
    probe = FreshnessProbe()
    worker = Worker(
        _config(bootstrap, topic, f"steady-{time.monotonic_ns()}", tmp / "steady-state"),
        WorkerOptions(idle_exit_s=3.0, progress=False),
        observers=[probe],
    )
    reports = []
    thread = threading.Thread(target=lambda: reports.append(worker.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not worker.ready[0]:  # the worker is connected and its topic assigned before the stream starts
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not become ready: {worker.ready[1]}")
        time.sleep(0.1)
    time.sleep(1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    cmd = [sys.executable, "-m", "consumers.cli", "produce", str(events), "--topic", topic]
    cmd += ["--bootstrap", bootstrap, "--rate", str(rate), "--now"]
    sent = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    produce_s = time.perf_counter() - sent
    thread.join(120)
    assert reports and reports[0].summary["applied"] == n, "the steady run lost events"
    return {
        "case": f"worker at a steady {rate:,} events/s (producer --rate --now)",
        "events": probe.applied,
        "seconds": produce_s,
        "events_per_s": probe.applied / produce_s,
        **probe.percentiles(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the pre-filled topic")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the pre-filled topic")
    parser.add_argument("--rate", type=int, default=10_000, help="events/s of the steady run")
    parser.add_argument("--steady-seconds", type=float, default=20.0, help="length of the steady run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--without-crc",
        action="store_true",
        help="also run both loops with check_crcs=false (kafka-python's pure-Python CRC32C dominates both)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmpdir, KafkaBroker(heap="1g") as broker:
        tmp = Path(tmpdir)
        drain_topic = broker.create_topic(partitions=args.partitions, name="bench-drain")
        steady_topic = broker.create_topic(partitions=1, name="bench-steady")
        config = _config(broker.bootstrap, drain_topic, "unused", tmp / "unused")
        rows.append(prefill(broker.bootstrap, drain_topic, args.events, args.seed))
        print(f"pre-filled {args.events:,} events", file=sys.stderr)
        rows.append(bare_loop(broker.bootstrap, drain_topic, args.events, config))
        print(f"bare loop {rows[-1]['events_per_s']:,.0f} events/s", file=sys.stderr)
        rows.append(worker_drain(broker.bootstrap, drain_topic, args.events, tmp / "drain-state"))
        print(f"worker drain {rows[-1]['events_per_s']:,.0f} events/s", file=sys.stderr)
        rows.append(steady(broker.bootstrap, steady_topic, args.rate, args.steady_seconds, args.seed, tmp))
        if args.without_crc:
            no_crc, label = {"check_crcs": False}, ", check_crcs=false"
            fast = _config(broker.bootstrap, drain_topic, "unused", tmp / "unused", no_crc)
            rows.append(bare_loop(broker.bootstrap, drain_topic, args.events, fast, label))
            rows.append(
                worker_drain(broker.bootstrap, drain_topic, args.events, tmp / "drain-fast", no_crc, label)
            )
    bare, drain, live = rows[1], rows[2], rows[3]
    ratio = drain["events_per_s"] / bare["events_per_s"]
    targets = {
        "worker_vs_bare_ratio": ratio,
        "worker_vs_bare_ratio_without_crc": rows[5]["events_per_s"] / rows[4]["events_per_s"]
        if args.without_crc
        else None,
        "worker_vs_bare_ratio_target": 0.5,
        "worker_vs_bare_met": ratio >= 0.5,
        "steady_p99_freshness_s": live.get("freshness_p99_s"),
        "steady_p99_freshness_target_s": 2.0,
        "steady_p99_freshness_met": live.get("freshness_p99_s", float("inf")) < 2.0,
    }
    path = save(
        "kafka_worker",
        {
            "events": args.events,
            "partitions": args.partitions,
            "rows": rows,
            "targets": targets,
            "peak_rss_mb": peak_rss_mb(),
            "notes": "kafka-python checks CRC32C of every record batch in pure Python unless the crc32c "
            "package is installed; both loops pay it equally (--without-crc measures both without it).",
        },
    )
    print(
        table(
            rows,
            [
                ("case", "case"),
                ("events", "events"),
                ("seconds", "s"),
                ("events_per_s", "events/s"),
                ("freshness_p50_s", "fresh p50 s"),
                ("freshness_p99_s", "fresh p99 s"),
            ],
        )
    )
    print(
        f"\nworker / bare loop: {ratio:.0%} (target >= 50%); steady p99 freshness "
        f"{live.get('freshness_p99_s', float('nan')):.3f} s (target < 2 s)\nresults: {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
