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
loaded) and ``/metrics`` (request counts, latencies and batch sizes) are served too, and
``POST /v1/noop``, which reads the body and answers ``{}``: the transport's own cost, the ceiling
``benchmarks/serving.py`` measures the endpoints against.

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

import asyncio
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from pipeline.serving.decisions import DecisionLog, exposure_records
from pipeline.serving.requests import Limits, Request, RequestError, parse_body
from pipeline.serving.view import ModelView, UnknownModelError, ViewHolder

__all__ = ["ModelBatcher", "ServingOptions", "ServingServer"]

log = logging.getLogger(__name__)

_ROUTES = {
    ("GET", "/v1/models"): "models",
    ("POST", "/v1/score"): "score",
    ("POST", "/v1/decide"): "decide",
    ("POST", "/v1/noop"): "noop",
}
_API_PATHS = {path for _, path in _ROUTES}
_ENDPOINT_LABELS = {path: path.rsplit("/", 1)[-1] for path in _API_PATHS}
_OPS_PATHS = ("/healthz", "/readyz", "/metrics")
_JSON = b"application/json"
_DRAIN_FACTOR = 8  # an oversized body up to this many times the limit is read and dropped


@dataclass(frozen=True)
class ServingOptions:
    """The ``[serving]`` settings the server itself uses."""

    token: str = ""
    max_body_bytes: int = 1 << 20
    max_inflight: int = 64
    batch_wait_s: float = 0.002
    limits: Limits = field(default_factory=Limits)


class _Reply(Exception):
    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class ModelBatcher:
    """Model calls of concurrent requests, batched: one featurizer and model call per batch.

    The server's event loop runs every request up to its model call, which queues it here; the
    first request of a loop iteration schedules one flush for the next iteration, so every
    request that arrived meanwhile joins it (dynamic batching, as inference servers do: the
    featurizer's and the model's fixed costs are paid once per batch). A flush groups its
    requests by view and model and scores each group in one
    :meth:`~pipeline.serving.view.ModelView.score_many` call, or decides a bandit group with
    :meth:`~pipeline.serving.view.ModelView.decide_many`; a group that fails is retried request
    by request, so that an error reaches only the request that caused it. The model runs on the
    loop's own thread, one batch at a time: on a few cores, concurrent numpy/pyarrow calls only
    thrash.
    """

    def __init__(
        self,
        max_batch: int = 64,
        max_wait_s: float = 0.0,
        connections: Callable[[], int] | None = None,
        sizes: Histogram | None = None,
    ):
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.connections = connections or (lambda: 1)
        self.sizes = sizes
        self._pending: list[tuple[ModelView, Request, bool, asyncio.Future]] = []
        self._scheduled = False
        self._first_at = 0.0
        self.calls = self.scored = 0

    def submit(self, view: ModelView, req: Request, decide: bool = False) -> asyncio.Future:
        """A future of the request's scores (or, with ``decide``, a bandit's :class:`Decision`)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((view, req, decide, future))
        if not self._scheduled:
            self._scheduled = True
            self._first_at = time.perf_counter()
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        waited = time.perf_counter() - self._first_at
        if waited < self.max_wait_s and len(self._pending) < min(self.max_batch, self.connections()):
            # other clients are connected: linger, reading their requests meanwhile, so that they
            # join this batch (a lone client's request is scored at once)
            loop.call_later(min(self.max_wait_s - waited, 0.0002), self._flush, loop)
            return
        self._scheduled = False
        pending, self._pending = self._pending, []
        groups: dict[tuple[int, str, bool], list] = {}
        for item in pending:
            groups.setdefault((id(item[0]), item[1].model, item[2]), []).append(item)
        for group in groups.values():
            for at in range(0, len(group), self.max_batch):
                self._run(group[at : at + self.max_batch])

    def _run(self, group: list) -> None:
        view, decide = group[0][0], group[0][2]
        call = view.decide_many if decide else view.score_many
        try:
            results = call([g[1] for g in group])
        except Exception:
            for _, req, _, future in group:  # alone, so that an error reaches only its own request
                try:
                    _resolve(future, call([req])[0])
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
            return
        self.calls += 1
        self.scored += len(group)
        if self.sizes is not None:
            self.sizes.observe(len(group))
        for (_, _, _, future), result in zip(group, results):
            _resolve(future, result)


def _resolve(future: asyncio.Future, result: Any) -> None:
    if not future.done():  # a client that went away cancelled its request
        future.set_result(result)


class ServingServer:
    """The HTTP API over a :class:`~pipeline.serving.view.ViewHolder` (see the module docstring).

    An ASGI application served by uvicorn (httptools, and uvloop where it installs) on a thread
    of its own, so that the worker's loop and a replica's snapshot follower run beside it.
    """

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
        self._inflight = 0
        self.registry = CollectorRegistry()
        self.batcher = ModelBatcher(
            max_wait_s=self.options.batch_wait_s,
            connections=self._connections,
            sizes=Histogram(
                "streamlearn_serving_batch_size",
                "Requests scored or decided in one model call (dynamic batching)",
                buckets=(1, 2, 4, 8, 16, 32, 64),
                registry=self.registry,
            ),
        )
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
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}
        self._socket: socket.socket | None = None
        self._bound_port = 0
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _connections(self) -> int:
        """Open client connections (each has at most one request in flight: no pipelining)."""
        return len(self._uvicorn.server_state.connections) if self._uvicorn is not None else 1

    @property
    def port(self) -> int:
        return self._bound_port or self._requested_port

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    # ------------------------------------------------------------------ the endpoints
    def _view(self) -> ModelView:
        view = self.holder.current
        if view is None:
            raise _Reply(503, {"error": "no model loaded yet"}, {"Retry-After": "1"})
        return view

    def models(self) -> dict:
        view = self._view()
        return {"models": view.describe(), "version": view.version.to_dict()}

    async def score(self, raw: bytes) -> dict:
        req = parse_body(raw, self.options.limits)
        view = self._view()
        view.learner(req.model)  # an unknown model is 404 before it joins a batch
        scores = await self.batcher.submit(view, req)
        return {
            "model": req.model,
            "request_id": req.request_id,
            "scores": [{"item_id": i, "score": s} for i, s in zip(req.item_ids, scores.tolist())],
            "version": view.version.to_dict(),
        }

    async def decide(self, raw: bytes) -> dict:
        req = parse_body(raw, self.options.limits, decide=True)
        view = self._view()
        try:
            if view.decides_by_itself(req):
                decision = await self.batcher.submit(view, req, decide=True)
            else:
                decision = view.decide(req, scores=await self.batcher.submit(view, req))
        except ValueError as exc:  # e.g. an exploration rule for a bandit
            raise RequestError("exploration", str(exc)) from None
        if self.decisions is not None:
            self.decisions.write(exposure_records(decision), key=req.user_id)
        return decision.to_dict()

    # ------------------------------------------------------------------ HTTP
    async def _handle(
        self, method: str, path: str, headers: dict[bytes, bytes], receive
    ) -> tuple[int, bytes, dict]:
        endpoint = _ROUTES.get((method, path))
        if endpoint is None:
            if path in _API_PATHS:
                raise _Reply(405, {"error": f"{method} not allowed on {path}"})
            raise _Reply(404, {"error": f"no endpoint {path}"})
        if self.options.token:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.options.token}".encode()):
                raise _Reply(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        if self._inflight >= self.options.max_inflight:
            raise _Reply(503, {"error": "overloaded"}, {"Retry-After": "1"})
        self._inflight += 1
        started = time.perf_counter()
        try:
            if endpoint == "models":
                return 200, orjson.dumps(self.models()), {}
            raw = await self._read_body(headers, receive)
            if endpoint == "noop":  # the transport alone: what benchmarks/serving.py compares with
                return 200, b"{}", {}
            result = await (self.score(raw) if endpoint == "score" else self.decide(raw))
            return 200, orjson.dumps(result), {}
        except RequestError as exc:
            raise _Reply(400, {"error": str(exc), "field": exc.field}) from None
        except UnknownModelError as exc:
            raise _Reply(404, {"error": str(exc)}) from None
        finally:
            self._inflight -= 1
            timer = self._timed.get(endpoint)
            if timer is None:
                timer = self._timed[endpoint] = self.latency.labels(endpoint)
            timer.observe(time.perf_counter() - started)

    async def _read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        limit = self.options.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise _Reply(400, {"error": "Content-Length is not a number"}) from None
            if length > limit:
                if length <= _DRAIN_FACTOR * limit:
                    # read and drop it, so that the client is not cut off mid-send (it would see a
                    # broken pipe instead of the answer) and its connection stays usable
                    while (await receive()).get("more_body", False):
                        pass
                raise _Reply(413, {"error": f"body of {length} bytes exceeds {limit}"})
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError  # the client is gone: nobody reads the answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # a chunked body has no declared length: count as it comes
                raise _Reply(413, {"error": f"body exceeds {limit} bytes"})
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _ops(self, path: str) -> tuple[int, bytes, bytes]:
        if path == "/healthz":
            return 200, b"ok\n", b"text/plain"
        if path == "/readyz":
            ready = self.holder.current is not None
            return (200, b"ok\n", b"text/plain") if ready else (503, b"no model yet\n", b"text/plain")
        return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()

    async def __call__(self, scope, receive, send) -> None:
        """The ASGI application."""
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        ctype, extra = _JSON, {}
        if method == "GET" and path in _OPS_PATHS:
            status, body, ctype = self._ops(path)
            endpoint = path.lstrip("/")
        else:
            # labelled by route, never by the raw path: a scan of made-up paths must not grow /metrics
            endpoint = _ENDPOINT_LABELS.get(path, "other")
            try:
                status, body, extra = await self._handle(method, path, dict(scope["headers"]), receive)
            except _Reply as reply:
                status, body, extra = reply.status, orjson.dumps(reply.body), reply.headers
            except Exception as exc:  # a bug must cost one request, never the server
                log.exception("serving %s failed", path)
                status, body = 500, orjson.dumps({"error": f"internal error: {exc!r}"})
            counter = self._counted.get((endpoint, status))
            if counter is None:  # a metric child per (endpoint, code), looked up once
                counter = self._counted[(endpoint, status)] = self.requests.labels(endpoint, str(status))
            counter.inc()
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ running
    def start(self, timeout: float = 30.0) -> ServingServer:
        """Bind ``address:port`` (0 picks a free port) and serve on a background thread."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.address, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            http="httptools",
            loop=_loop_kind(),
            lifespan="off",
            log_config=None,  # the application's logging stays as it was
            log_level="warning",
            access_log=False,  # requests are counted in /metrics, not logged one by one
            proxy_headers=False,
            server_header=False,
            backlog=1024,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=5,
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="serving", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the serving API did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            self._thread.join(15)
            self._uvicorn = self._thread = None
        if self._socket is not None:
            self._socket.close()
        if self.decisions is not None:
            try:
                self.decisions.close()
            except Exception as exc:  # best effort at shutdown
                log.warning("closing the decision log failed: %r", exc)


def _loop_kind() -> str:
    try:
        import uvloop  # noqa: F401  (uvloop sets TCP_NODELAY and halves the loop's cost)
    except ImportError:
        return "asyncio"
    return "uvloop"
