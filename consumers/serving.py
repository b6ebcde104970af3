"""The scoring and decision API over HTTP: ``/v1/score``, ``/v1/decide``, ``/v1/models``.

One server type for both ways of running it: inside the worker (``serving.port``; the worker swaps
in a new :class:`~pipeline.serving.view.ModelView` after batches) and in ``streamlearn serve``
replicas (the newest snapshot of a state directory, swapped when a newer one is written). Each
request reads the view current when it starts, so it is answered by one whole model.

Safe by default: loopback unless ``serving.address`` says otherwise; an optional bearer token
(``serving.token``); bodies over ``serving.max_body_bytes`` are 413, more than
``serving.max_candidates`` candidates 400; a wrong field is 400 naming it, an unknown model 404;
more than ``serving.max_inflight`` requests at once are 503 with ``Retry-After``; no view yet is
503. Every decision is written to the decision log (a Kafka topic or a JSONL file) as exposure
events (:mod:`pipeline.serving.decisions`). ``/healthz`` and ``/readyz`` (200 once a model is
loaded) and ``/metrics`` (request counts and latencies) are served too, and ``POST /v1/noop``, which
reads the body and answers ``{}``: the transport's own cost, the ceiling ``benchmarks/serving.py``
measures the endpoints against.

Examples
--------
>>> from pipeline.serving.view import ViewHolder
>>> server = ServingServer(ViewHolder(), port=0).start()
>>> import urllib.request, urllib.error
>>> try:
...     urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v1/models")
... except urllib.error.HTTPError as err:
...     print(err.code, err.read())
503 b'{"error":"no model loaded yet"}'
>>> server.stop()
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from pipeline.serving.decisions import DecisionLog, exposure_records
from pipeline.serving.requests import Limits, RequestError, parse_request
from pipeline.serving.view import UnknownModelError, ViewHolder

__all__ = ["ModelLane", "ServingOptions", "ServingServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingOptions:
    """The ``[serving]`` settings the server itself uses."""

    token: str = ""
    max_body_bytes: int = 1 << 20
    max_inflight: int = 64
    limits: Limits = field(default_factory=Limits)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the stdlib's listen backlog of 5 drops connections under a burst of clients (each retried by
    # the client's TCP stack after 1 s): take what the kernel allows
    request_queue_size = 1024


class _Waiting:
    """One request's place in the model lane: filled by whichever thread runs the batch."""

    __slots__ = ("error", "req", "result", "view")

    def __init__(self, view, req):
        self.view, self.req = view, req
        self.result = self.error = None


class ModelLane:
    """Model calls one at a time, concurrent requests of one model scored in one call.

    A request thread queues its request and takes the lane; whoever holds it scores every queued
    request, grouped by view and model, in one :meth:`~pipeline.serving.view.ModelView.score_many`
    call each (dynamic batching: the featurizer's and the model's fixed costs are paid once per
    batch); a thread whose request was scored by another just returns. One call at a time is also
    faster than many: concurrent numpy/pyarrow calls on a few cores thrash (measured in
    ``benchmarks/serving.py``).
    """

    def __init__(self, max_batch: int = 64):
        self.max_batch = max_batch
        self._lane = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self.calls = self.scored = 0

    def score(self, view, req):
        waiting = _Waiting(view, req)
        with self._queue_lock:
            self._queue.append(waiting)
        with self._lane:
            if waiting.result is None and waiting.error is None:
                with self._queue_lock:
                    batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                self._run(batch)
        if waiting.error is not None:
            raise waiting.error
        return waiting.result

    def _run(self, batch: list[_Waiting]) -> None:
        groups: dict[tuple[int, str], list[_Waiting]] = {}
        for w in batch:
            groups.setdefault((id(w.view), w.req.model), []).append(w)
        for group in groups.values():
            try:
                results = group[0].view.score_many([w.req for w in group])
            except Exception:  # score each alone, so that an error reaches only its own request
                for w in group:
                    try:
                        w.result = w.view.score(w.req)
                    except Exception as exc:
                        w.error = exc
                continue
            self.calls += 1
            self.scored += len(group)
            for w, r in zip(group, results):
                w.result = r

    def run(self, fn):
        """Any other model call, in the lane."""
        with self._lane:
            return fn()


class _Reply(Exception):
    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class ServingServer:
    """The HTTP API over a :class:`~pipeline.serving.view.ViewHolder` (see the module docstring)."""

    def __init__(
        self,
        holder: ViewHolder,
        address: str = "127.0.0.1",
        port: int = 0,
        options: ServingOptions | None = None,
        decisions: DecisionLog | None = None,
    ):
        self.holder, self.address, self._requested_port = holder, address, port
        self.options = options or ServingOptions()
        self.decisions = decisions
        self._slots = threading.BoundedSemaphore(self.options.max_inflight)
        self.lane = ModelLane()  # model calls one at a time, batched; HTTP stays concurrent
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streamlearn_serving_requests_total",
            "Serving requests by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "streamlearn_serving_request_duration_seconds",
            "Time to answer a serving request",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._requested_port

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    # ------------------------------------------------------------------ the endpoints
    def _view(self):
        view = self.holder.current
        if view is None:
            raise _Reply(503, {"error": "no model loaded yet"}, {"Retry-After": "1"})
        return view

    def models(self) -> dict:
        view = self._view()
        return {"models": view.describe(), "version": view.version.to_dict()}

    def score(self, body) -> dict:
        req = parse_request(body, self.options.limits)
        view = self._view()
        view.learner(req.model)  # an unknown model is 404 before it joins a batch
        scores = self.lane.score(view, req)
        return {
            "model": req.model,
            "request_id": req.request_id,
            "scores": [{"item_id": i, "score": float(s)} for i, s in zip(req.item_ids, scores)],
            "version": view.version.to_dict(),
        }

    def decide(self, body) -> dict:
        req = parse_request(body, self.options.limits, decide=True)
        view = self._view()
        try:
            if view.decides_by_itself(req):
                decision = self.lane.run(lambda: view.decide(req))
            else:
                decision = view.decide(req, scores=self.lane.score(view, req))
        except ValueError as exc:  # e.g. an exploration rule for a bandit
            raise RequestError("exploration", str(exc)) from None
        if self.decisions is not None:
            self.decisions.write(exposure_records(decision), key=req.user_id)
        return decision.to_dict()

    # ------------------------------------------------------------------ HTTP
    def _handle(self, method: str, path: str, headers, read_body) -> tuple[int, bytes, dict[str, str]]:
        routes = {
            ("GET", "/v1/models"): "models",
            ("POST", "/v1/score"): "score",
            ("POST", "/v1/decide"): "decide",
            ("POST", "/v1/noop"): "noop",
        }
        endpoint = routes.get((method, path))
        if endpoint is None:
            if path in ("/v1/models", "/v1/score", "/v1/decide", "/v1/noop"):
                raise _Reply(405, {"error": f"{method} not allowed on {path}"})
            raise _Reply(404, {"error": f"no endpoint {path}"})
        if self.options.token:
            given = headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.options.token}".encode()):
                raise _Reply(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        if not self._slots.acquire(blocking=False):
            raise _Reply(503, {"error": "overloaded"}, {"Retry-After": "1"})
        started = time.perf_counter()
        try:
            if endpoint == "models":
                result = self.models()
            elif endpoint == "noop":  # the transport alone: what benchmarks/serving.py compares with
                read_body()
                return 200, b"{}", {}
            else:
                raw = read_body()
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise _Reply(400, {"error": f"body: not valid JSON ({exc})", "field": "body"}) from None
                result = self.score(body) if endpoint == "score" else self.decide(body)
            return 200, orjson.dumps(result), {}
        except RequestError as exc:
            raise _Reply(400, {"error": str(exc), "field": exc.field}) from None
        except UnknownModelError as exc:
            raise _Reply(404, {"error": str(exc)}) from None
        finally:
            self._slots.release()
            self.latency.labels(endpoint).observe(time.perf_counter() - started)

    def start(self) -> ServingServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
            # headers and body leave in two writes: with Nagle on, the body waits for the client's
            # delayed ACK (40 ms on Linux) on every keep-alive request
            disable_nagle_algorithm = True

            def _send(self, status: int, body: bytes, headers: dict[str, str], ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _read_body(self) -> bytes:
                self._body_read = True
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    raise _Reply(411, {"error": "Content-Length required"}) from None
                if length > owner.options.max_body_bytes:
                    self.close_connection = True  # the unread body cannot be skipped safely
                    raise _Reply(
                        413, {"error": f"body of {length} bytes exceeds {owner.options.max_body_bytes}"}
                    )
                return self.rfile.read(length)

            def _dispatch(self, method: str):
                path = self.path.split("?", 1)[0]
                if method == "GET" and path in ("/healthz", "/readyz", "/metrics"):
                    return self._ops(path)
                endpoint = path.rsplit("/", 1)[-1]
                self._body_read = False
                try:
                    status, body, headers = owner._handle(method, path, self.headers, self._read_body)
                except _Reply as reply:
                    status, body, headers = reply.status, orjson.dumps(reply.body), reply.headers
                    if method == "POST" and not self._body_read and not self.close_connection:
                        self._drain()  # keep-alive: the next request starts after this body
                except Exception as exc:  # a bug must cost one request, never the server
                    log.exception("serving %s failed", path)
                    status, body, headers = 500, orjson.dumps({"error": f"internal error: {exc!r}"}), {}
                owner.requests.labels(endpoint, str(status)).inc()
                self._send(status, body, headers)

            def _drain(self):
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    length = 0
                if 0 < length <= owner.options.max_body_bytes:
                    self.rfile.read(length)
                elif length:
                    self.close_connection = True

            def _ops(self, path: str):
                if path == "/healthz":
                    return self._send(200, b"ok\n", {}, "text/plain")
                if path == "/readyz":
                    ready = owner.holder.current is not None
                    return self._send(
                        200 if ready else 503, b"ok\n" if ready else b"no model yet\n", {}, "text/plain"
                    )
                return self._send(200, generate_latest(owner.registry), {}, CONTENT_TYPE_LATEST)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def log_message(self, *args):  # requests are counted in /metrics, not logged one by one
                pass

        self._server = _Server((self.address, self._requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="serving", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.decisions is not None:
            try:
                self.decisions.close()
            except Exception as exc:  # best effort at shutdown
                log.warning("closing the decision log failed: %r", exc)
