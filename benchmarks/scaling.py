"""Many workers, one model: throughput and the cost of sharing the model, for N = 1, 2, 3 workers.

Everything runs against a real single-node broker (the test harness) with ``streamlearn worker``
processes, as deployed:

1. **drain**: a topic of ``--events`` simulated events over 6 partitions is drained by one worker
   without ``[group]`` (the baseline: its own model), then by N = 1, 2, 3 workers with ``[group]``
   (one model). Per run: events/s of the group and per worker (from the workers' ``/metrics``,
   first applied event to the last), delta bytes/s sent and received, seconds spent on sync and
   each worker's CPU seconds (``/proc``).
2. **equivalence**: the N-worker final snapshots beside the one-worker group run's: the largest
   relative difference of Diag-LinUCB's sums, and FTRL's AUC on a holdout of later events.
3. **joining**: two workers drain half of a stream, a third joins with ``bootstrap_dirs`` and the
   rest arrives; its AUC over its first evaluation window beside the running workers' at the same
   moment, and beside a cold worker (no ``[group]``) on the same second half.

Usage: ``python benchmarks/scaling.py [--events N]``; writes ``benchmarks/results/scaling.json``
and prints markdown tables. This machine has 2 cores: with the broker, N = 3 workers over-subscribe
it, so the aggregate figure is a floor; docs/scaling.md projects larger groups from the per-worker
costs measured here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import compile_project, peak_rss_mb, save, table

from consumers.kafka import KafkaWriter
from pipeline.config import load_config
from pipeline.simulate import SimConfig, Simulator
from tests.kafka.broker import KafkaBroker
from tests.kafka.workers import WorkerProcess, http_get, worker_config

PARTITIONS = 6
LEARNERS = """
[[learners]]
kind = "ftrl"
[[learners]]
kind = "diag_linucb"
params = { reset_on_drift = false }
[evaluation]
window = 10000
"""
_METRIC = re.compile(r"^(streamlearn_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", re.M)


def scrape(proc: WorkerProcess) -> dict[str, float]:
    status, body = http_get(proc.url("/metrics"), timeout=2.0)
    if status != 200:
        return {}
    return {name + (labels or ""): float(v) for name, labels, v in _METRIC.findall(body)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sim_lines(seed: int, n: int, skip: int = 0) -> list[bytes]:
    sim = Simulator(SimConfig(seed=seed, log_candidates=False))
    out: list[bytes] = []
    for chunk in sim.json_chunks(skip + n):
        out.extend(chunk.lines)
    return out[skip : skip + n]


def fill(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    with KafkaWriter(bootstrap, topic, client={"acks": 1, "linger_ms": 20}) as writer:
        for i in range(0, len(lines), 10_000):
            writer.send(lines[i : i + 10_000])


class Run:
    """N worker processes on one topic, one consumer group (and one updates topic with ``group``)."""

    def __init__(
        self, tmp: Path, name: str, bootstrap: str, topic: str, n: int, group: bool, bootstrap_dirs=()
    ):
        self.tmp, self.name, self.bootstrap, self.topic, self.group = tmp, name, bootstrap, topic, group
        self.dirs = [tmp / f"{name}-w{i}" for i in range(n)]
        self.procs: list[WorkerProcess] = []
        self.bootstrap_dirs = list(bootstrap_dirs) or self.dirs

    def config(self, i: int, dirs=None) -> Path:
        learners = LEARNERS
        if self.group:
            learners += (
                "[group]\nenabled = true\n"
                f"updates_topic = {json.dumps(self.topic + '.' + self.name + '.updates')}\n"
                f"bootstrap_dirs = {json.dumps([str(d) for d in (dirs or self.bootstrap_dirs)])}\n"
            )
        return worker_config(
            self.tmp / f"{self.name}-w{i}.toml",
            self.bootstrap,
            [self.topic],
            f"{self.name}-{self.topic}",
            self.dirs[i],
            batch_size=2000,
            every_events=500_000,
            every_seconds=20.0,
            learners=learners,
        )

    def start(self, i: int) -> WorkerProcess:
        if i >= len(self.dirs):
            self.dirs.append(self.tmp / f"{self.name}-w{i}")
        proc = WorkerProcess(f"{self.name}-w{i}", self.config(i), self.tmp)
        self.procs.append(proc)
        return proc

    def applied(self) -> list[float]:
        return [scrape(p).get('streamlearn_events_total{outcome="applied"}', 0.0) for p in self.procs]

    def stop(self) -> list[dict]:
        cpu = []
        for p in self.procs:
            try:
                cpu.append(cpu_seconds(p.pid))
            except OSError:
                cpu.append(float("nan"))
            p.signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(120)
        return [dict(p.report(), cpu_s=c) for p, c in zip(self.procs, cpu)]


def drain(tmp: Path, broker: KafkaBroker, lines: list[bytes], n: int, group: bool) -> dict:
    """A pre-filled topic drained by N workers: the group's rate from its first applied event to its
    last, and each worker's over its own active time (polled from its /metrics every 50 ms)."""
    topic = broker.create_topic(partitions=PARTITIONS, name=f"bench-scaling-{n}-{int(group)}")
    events = len(lines)
    fill(broker.bootstrap, topic, lines)
    run = Run(tmp, f"{'g' if group else 'solo'}{n}", broker.bootstrap, topic, n, group)
    for i in range(n):
        run.start(i)
    firsts: list[float | None] = [None] * n
    lasts: list[float] = [0.0] * n
    prev = [0.0] * n
    first = last = None
    final = [0.0] * n
    while True:
        got = run.applied()
        now = time.perf_counter()
        for i, a in enumerate(got):
            if a > prev[i]:
                firsts[i] = firsts[i] if firsts[i] is not None else now
                lasts[i], prev[i] = now, a
        if first is None and sum(got) > 0:
            first = now
        if sum(got) >= events:
            last, final = now, got
            break
        for p in run.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.name} exited early\n{p.log_tail()}")
        time.sleep(0.05)
    if group:  # each worker's model holds every event (its peers' last deltas read) before the stop
        key = "streamlearn_group_frontier_records"
        deadline = time.monotonic() + 60
        while not all(scrape(p).get(key, 0) >= events for p in run.procs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not converge: {[scrape(p).get(key) for p in run.procs]}")
            time.sleep(0.2)
    metrics = [scrape(p) for p in run.procs]
    reports = run.stop()
    seconds = last - first
    sent = sum(m.get('streamlearn_group_sync_bytes_total{direction="sent"}', 0.0) for m in metrics)
    received = sum(m.get('streamlearn_group_sync_bytes_total{direction="received"}', 0.0) for m in metrics)
    sync_s = [m.get("streamlearn_group_sync_seconds_total", 0.0) for m in metrics]
    cpu = [r["cpu_s"] for r in reports]
    row = {
        "case": f"{n} worker{'s' if n > 1 else ''}, {'[group]: one model' if group else 'own model (no [group])'}",
        "workers": n,
        "group": group,
        "events": int(sum(final)),
        "seconds": seconds,
        "events_per_s": sum(final) / seconds,
        # each worker over its own active time (first to last event it applied): rebalances at the
        # start leave the workers' windows unequal
        "per_worker_events_per_s": [a / max(end - f, 1e-3) for a, f, end in zip(final, firsts, lasts)],
        "sent_bytes_per_s": sent / seconds,
        "received_bytes_per_s": received / seconds,
        "sync_seconds": sync_s,
        "sync_cpu_share": float(np.sum(sync_s) / max(np.sum(cpu), 1e-9)),
        "cpu_seconds": cpu,
        "dirs": [str(d) for d in run.dirs],
        "outcomes": [r.get("extra", {}).get("group", {}).get("outcomes") for r in reports],
    }
    row["per_worker_mean_events_per_s"] = float(np.mean(row["per_worker_events_per_s"]))
    row["sent_kib_per_s"] = row["sent_bytes_per_s"] / 1024
    row["received_kib_per_s"] = row["received_bytes_per_s"] / 1024
    row["sync_pct"] = 100 * row["sync_cpu_share"]
    return row


def final_runner(config_path: Path, state_dir: Path):
    from pipeline.runner import Runner
    from state.snapshot import SnapshotStore

    runner = Runner.from_config(load_config(config_path, environ={}))
    runner.load_state(SnapshotStore(state_dir).latest_valid()[1])
    return runner


def equivalence(tmp: Path, rows: list[dict], holdout: list[bytes]) -> dict:
    from sklearn.metrics import roc_auc_score

    from pipeline.events import EventRules, decode_json
    from pipeline.group.sync import ModelSync

    events, _ = decode_json(holdout, EventRules())
    ref_row = next(r for r in rows if r["group"] and r["workers"] == 1)
    out = {}
    ref = final_runner(Path(ref_row["dirs"][0] + ".toml"), Path(ref_row["dirs"][0]))
    fb = ref.featurizer.transform(events)
    ref_auc = roc_auc_score(fb.labels, ref.learners[0].predict(fb))
    ref_parts = ModelSync(ref, "r", "h").base["diag_linucb/arms"]
    order_ref = np.argsort(ref_parts.ids)
    for row in rows:
        if not row["group"] or row["workers"] == 1:
            continue
        aucs, rel = [], {}
        for d in row["dirs"]:
            runner = final_runner(Path(d + ".toml"), Path(d))
            fbw = runner.featurizer.transform(events)
            aucs.append(roc_auc_score(fbw.labels, runner.learners[0].predict(fbw)))
            part = ModelSync(runner, "x", "h").base["diag_linucb/arms"]
            assert sorted(part.ids) == sorted(ref_parts.ids)
            order = np.argsort(part.ids)
            for k in part.arrays:  # n and sr are sums of raw events; d, b, sx of standardised ones
                a, b = part.arrays[k][order], ref_parts.arrays[k][order_ref]
                off = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
                rel[k] = max(rel.get(k, 0.0), off)
        out[row["workers"]] = {
            "ftrl_holdout_auc": aucs,
            "ftrl_holdout_auc_one_worker": ref_auc,
            "ftrl_auc_points_off": float(100 * max(abs(a - ref_auc) for a in aucs)),
            "diag_linucb_relative_difference": rel,
        }
    return out


def joining(tmp: Path, broker: KafkaBroker, first: list[bytes], second: list[bytes]) -> dict:
    """Two workers run; a third joins from their snapshots; a cold worker sees only the second half."""
    topic = broker.create_topic(partitions=PARTITIONS, name="bench-join")
    fill(broker.bootstrap, topic, first)
    run = Run(tmp, "join", broker.bootstrap, topic, 2, True)
    run.dirs.append(tmp / "join-w2")
    run.bootstrap_dirs = list(run.dirs)
    for i in range(2):
        run.start(i)
    while sum(run.applied()) < len(first):
        time.sleep(0.2)
    for p in run.procs:  # a snapshot now, so the joiner finds the group's newest state
        p.signal(signal.SIGUSR1)
    time.sleep(3.0)
    joiner = run.start(2)
    deadline = time.monotonic() + 120
    while "assigned ['" not in joiner.log.read_text(errors="replace"):
        if time.monotonic() > deadline or joiner.poll() is not None:
            raise RuntimeError(f"the joiner got no partitions\n{joiner.log_tail()}")
        time.sleep(0.2)
    fill(broker.bootstrap, topic, second)
    window = 10_000
    auc_key = 'streamlearn_model_auc{learner="ftrl",window="10000"}'
    joined_auc = running_auc = None
    while joined_auc is None:
        m = [scrape(p) for p in run.procs]
        if m[2].get('streamlearn_events_total{outcome="applied"}', 0) >= window and auc_key in m[2]:
            joined_auc = m[2][auc_key]
            running_auc = [x.get(auc_key) for x in m[:2]]
        elif time.monotonic() > deadline + 120:
            raise RuntimeError(f"the joiner never filled a window\n{joiner.log_tail()}")
        time.sleep(0.3)
    reports = run.stop()
    # a cold worker: no [group], only the second half
    cold_topic = broker.create_topic(partitions=PARTITIONS, name="bench-join-cold")
    fill(broker.bootstrap, cold_topic, second)
    cold = Run(tmp, "cold", broker.bootstrap, cold_topic, 1, False)
    proc = cold.start(0)
    cold_auc = None
    while cold_auc is None:
        m = scrape(proc)
        if m.get('streamlearn_events_total{outcome="applied"}', 0) >= window and auc_key in m:
            cold_auc = m[auc_key]
        time.sleep(0.3)
    cold.stop()
    return {
        "joined_from": reports[2].get("extra", {}).get("group", {}).get("bootstrapped_from"),
        "joiner_first_window_auc": joined_auc,
        "running_workers_auc": running_auc,
        "auc_points_behind": float(100 * (np.mean(running_auc) - joined_auc)),
        "cold_worker_first_window_auc": cold_auc,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="events in the drained topic")
    parser.add_argument(
        "--join-events", type=int, default=60_000, help="events of each half of the joining run"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    compile_project()
    lines = sim_lines(args.seed, args.events + 20_000)
    stream, holdout = lines[: args.events], lines[args.events :]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmpdir, KafkaBroker(heap="1g") as broker:
        tmp = Path(tmpdir)
        for n, group in ((1, False), (1, True), (2, True), (3, True)):
            rows.append(drain(tmp, broker, stream, n, group))
            r = rows[-1]
            print(
                f"{r['case']}: {r['events_per_s']:,.0f} events/s, sent {r['sent_kib_per_s']:,.0f} KiB/s, "
                f"sync {r['sync_pct']:.1f}% of CPU",
                file=sys.stderr,
            )
        equiv = equivalence(tmp, rows, holdout)
        print(f"equivalence: {equiv}", file=sys.stderr)
        join_lines = sim_lines(args.seed + 1, 2 * args.join_events)
        join = joining(tmp, broker, join_lines[: args.join_events], join_lines[args.join_events :])
        print(f"joining: {join}", file=sys.stderr)
    for r in rows:
        r.pop("dirs", None)
    path = save(
        "scaling",
        {
            "events": args.events,
            "partitions": PARTITIONS,
            "rows": rows,
            "equivalence": equiv,
            "joining": join,
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    print(
        table(
            rows,
            [
                ("case", "case"),
                ("events_per_s", "group events/s"),
                ("per_worker_mean_events_per_s", "per worker events/s"),
                ("sent_kib_per_s", "deltas sent KiB/s"),
                ("received_kib_per_s", "deltas read KiB/s"),
                ("sync_pct", "sync % of CPU"),
            ],
        )
    )
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
