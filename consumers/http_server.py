"""The operations endpoint: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process is alive and its loop is turning; ``/readyz`` answers
200 only while the worker is connected and consuming (503 with the reason otherwise), so an
orchestrator stops routing to — or alerting on — a worker whose broker is away.

Examples
--------
>>> import urllib.request
>>> from pipeline.metrics import StreamMetrics
>>> server = OpsServer(StreamMetrics(), port=0)
>>> server.start()
>>> urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz").read()
b'ok\\n'
>>> server.set_ready(False, "broker unreachable")
>>> try:
...     urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz")
... except urllib.error.HTTPError as err:
...     print(err.code, err.read())
503 b'not ready: broker unreachable\\n'
>>> server.stop()
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.config import Config
from pipeline.metrics import StreamMetrics

__all__ = ["OpsServer", "start_ops_server"]


class OpsServer:
    def __init__(self, metrics: StreamMetrics, address: str = "127.0.0.1", port: int = 0):
        self.metrics = metrics
        self.address = address
        self._requested_port = port
        self._ready = (False, "starting")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._requested_port

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self._ready = (ready, reason)
        self.metrics.ready.set(1 if ready else 0)

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, owner.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ready, reason = owner._ready
                    if ready:
                        self._send(200, b"ready\n")
                    else:
                        self._send(503, f"not ready: {reason}\n".encode())
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds would flood stderr
                pass

        self._server = ThreadingHTTPServer((self.address, self._requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_ops_server(metrics: StreamMetrics, config: Config, port: int | None = None) -> OpsServer | None:
    """Start the ops server on ``port`` (default ``[metrics] port``; None or 0 = off) and say where."""
    port = port if port is not None else (config.metrics.port or None)
    if port is None:
        return None
    server = OpsServer(metrics, config.metrics.address, port)
    server.start()
    print(f"metrics on http://{config.metrics.address}:{server.port}/metrics", file=sys.stderr)
    return server
