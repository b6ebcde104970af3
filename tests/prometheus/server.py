"""A real Prometheus server for tests (docs/design.md §9): Debian's ``prometheus`` binary on a free loopback port.

The server has its own configuration and storage in a temporary directory, evaluates the given rule
files every second and scrapes job ``streamlearn`` every second from the targets listed in a
file-based service-discovery file, so that a test can point it at a target that starts after it
(:meth:`PrometheusServer.set_targets`). :meth:`query` and friends wrap the HTTP API and raise
:class:`PrometheusError` with Prometheus's own message when a query is rejected.

By hand::

    python -m tests.prometheus.server 127.0.0.1:9108     # serve until Ctrl-C, print the URL
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PrometheusError", "PrometheusServer", "find_binary"]

JOB = "streamlearn"
INSTALL_HINT = (
    "the Prometheus tests need Debian's prometheus package: run `make prometheus-install` "
    "(or `apt-get install prometheus` as root)"
)


class PrometheusError(RuntimeError):
    """Prometheus rejected a request (the message is Prometheus's own) or did not start."""


def find_binary(name: str = "prometheus") -> str | None:
    """Path of ``prometheus`` / ``promtool`` on PATH (or ``$STREAMLEARN_PROMETHEUS_BIN``'s folder)."""
    folder = os.environ.get("STREAMLEARN_PROMETHEUS_BIN")
    if folder and (Path(folder) / name).exists():
        return str(Path(folder) / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """One Prometheus process; ``start()`` waits until it is ready, ``close()`` stops it and removes its files."""

    def __init__(self, rule_files: Sequence[str | Path] = (), scrape_interval: str = "1s"):
        binary = find_binary()
        if binary is None:
            raise PrometheusError(INSTALL_HINT)
        self.binary = binary
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.dir = Path(tempfile.mkdtemp(prefix="streamlearn-prometheus-"))
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._targets_file = self.dir / "targets.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> None:
        self._write_targets([])
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "file_sd_configs": [{"files": [str(self._targets_file)], "refresh_interval": "1s"}],
                }
            ],
        }
        # JSON is YAML: no YAML writer needed
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=2))
        self.port = _free_port()
        log = open(self.dir / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self.wait_for(self._ready, timeout, "Prometheus to answer /-/ready")
        except PrometheusError:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # ------------------------------------------------------------------------------ targets
    def _write_targets(self, targets: Sequence[str]) -> None:
        tmp = self._targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": list(targets), "labels": {}}]))
        os.replace(tmp, self._targets_file)  # atomic: Prometheus never reads half a file

    def set_targets(self, targets: Sequence[str], timeout: float = 20.0) -> None:
        """Scrape ``host:port`` targets from now on; returns once every one has been scraped successfully."""
        self._write_targets(targets)

        def healthy() -> bool:
            active = self._get("/api/v1/targets", {"state": "active"})["activeTargets"]
            up = {t["labels"].get("instance") for t in active if t["health"] == "up"}
            return set(targets) <= up

        self.wait_for(healthy, timeout, f"Prometheus to scrape {', '.join(targets)}")

    # ------------------------------------------------------------------------------ API
    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        query = urllib.parse.urlencode(params or {}, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query; the result vector (or ``[scalar]``)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._get("/api/v1/query", params)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})[
            "result"
        ]

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        return self._get(f"/api/v1/label/{label}/values", {"match[]": match} if match else None)

    def series(self, match: str) -> list[dict]:
        return self._get("/api/v1/series", {"match[]": match})

    def rules(self) -> list[dict]:
        """Every rule of every group, with its ``health`` and ``lastError``."""
        return [r for g in self._get("/api/v1/rules")["groups"] for r in g["rules"]]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise PrometheusError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.log_tail()}")


def main(argv: Sequence[str]) -> int:
    rules = sorted(Path(__file__).resolve().parents[2].glob("dashboards/prometheus/rules/*.yml"))
    with PrometheusServer(rule_files=rules) as server:
        server._write_targets(list(argv) or ["127.0.0.1:9108"])
        print(f"Prometheus at {server.url} (data in {server.dir}); Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
