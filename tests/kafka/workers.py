"""Helpers for the worker's integration tests: worker subprocesses, waiting, and reading Kafka back.

Workers run as real processes (``python -m consumers.cli worker``) so that ``kill -9`` is real; every
process started through :class:`WorkerProcesses` is killed when the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from tests.kafka.broker import REPO_ROOT, free_port

__all__ = [
    "WorkerProcess",
    "WorkerProcesses",
    "committed",
    "end_offsets",
    "http_get",
    "read_topic",
    "wait_for",
    "worker_config",
]

FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


def worker_config(
    path: Path,
    bootstrap: str,
    topics: list[str],
    group: str,
    state_dir: Path,
    *,
    batch_size: int = 500,
    every_events: int = 2000,
    every_seconds: float = 0.5,
    max_wait_ms: int = 100,
    dead_letter_topic: str = "",
    client: dict | None = None,
    learners: str = '[[learners]]\nkind = "ftrl"\nparams = { bits = 16 }\n',
) -> Path:
    """Write a worker configuration (TOML) and return its path."""
    client = {**FAST_GROUP, **(client or {})}
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in client.items())
    path.write_text(
        f"""
[source]
batch_size = {batch_size}
max_wait_ms = {max_wait_ms}
progress = false
[snapshot]
dir = {json.dumps(str(state_dir))}
every_events = {every_events}
every_seconds = {every_seconds}
keep = 3
[dead_letter]
topic = {json.dumps(dead_letter_topic)}
[kafka]
bootstrap_servers = {json.dumps(bootstrap)}
topics = {json.dumps(topics)}
group_id = {json.dumps(group)}
poll_timeout_ms = 200
max_poll_records = 2000
client = {{ {inline} }}
{learners}
"""
    )
    return path


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0, procs=()) -> object:
    """Poll ``condition`` until it is truthy (returned); fail naming ``what`` (and dead workers' logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(
                    f"{proc.name} exited ({proc.returncode}) before {what}\n{proc.log_tail()}"
                )
        if time.monotonic() > deadline:
            for proc in procs:
                proc.dump_stacks()
            tails = "\n".join(p.log_tail() for p in procs)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.05)


class WorkerProcess:
    """One ``streamlearn worker`` subprocess; output goes to ``<dir>/<name>.log``."""

    def __init__(self, name: str, config: Path, workdir: Path, extra: list[str] = ()):
        self.name = name
        self.log = workdir / f"{name}.log"
        self.summary = workdir / f"{name}.summary.json"
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT writes every thread's stack into the log (dump_stacks)
        cmd = [
            sys.executable,
            "-m",
            "consumers.cli",
            "--log-level",
            os.environ.get("STREAMLEARN_TEST_WORKER_LOG", "INFO"),
            "worker",
            "--config",
            str(config),
        ]
        cmd += ["--summary-json", str(self.summary), "--metrics-port", str(self.metrics_port), *extra]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, chars: int = 8000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log ---\n{text[-chars:]}"

    def dump_stacks(self) -> None:
        """Abort a hung worker so that its threads' stacks land in the log (for the failure message)."""
        for _ in range(3):  # a few samples tell a spinning loop from a blocked one
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGUSR2)
                time.sleep(0.7)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout:.0f} s\n{self.log_tail()}"
            ) from None

    def report(self) -> dict:
        return json.loads(self.summary.read_text())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"


class WorkerProcesses:
    """Starts workers for one test and kills whatever is left at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[WorkerProcess] = []

    def start(self, name: str, config: Path, *extra: str) -> WorkerProcess:
        proc = WorkerProcess(name, config, self.workdir, list(extra))
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            proc.kill()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """``(status, body)``; ``(0, error)`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, OSError) as err:
        return 0, repr(err)


def _plain_consumer(bootstrap: str, **kwargs) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kwargs)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, tuple[int, str] | None]:
    """``{partition: (offset, metadata)}`` committed by ``group``, read by a consumer outside the group."""
    check = _plain_consumer(bootstrap, group_id=group)
    try:
        out = {}
        for p in range(partitions):
            om = check.committed(TopicPartition(topic, p), metadata=True)
            out[p] = None if om is None else (om.offset, om.metadata)
        return out
    finally:
        check.close(autocommit=False)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    check = _plain_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: off for tp, off in check.end_offsets(tps).items()}
    finally:
        check.close(autocommit=False)


def read_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> list:
    """Every record of ``topic`` up to its current end, as kafka-python ``ConsumerRecord``\\ s."""
    ends = end_offsets(bootstrap, topic, partitions)
    reader = _plain_consumer(bootstrap, auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        reader.assign(tps)
        reader.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout
        while any(reader.position(tp) < ends[tp.partition] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end {ends}"
            for recs in reader.poll(200).values():
                records.extend(recs)
        return records
    finally:
        reader.close(autocommit=False)
