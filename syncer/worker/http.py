"""The worker's own HTTP endpoints, for probes and Prometheus.

    /health   200 while the process runs (a liveness probe: restart it if this fails)
    /ready    200 when every subscription's source and OpenSearch are connected and it
              makes progress; else 503, the JSON body saying which is not and why
    /metrics  Prometheus text format (`syncer.worker.metrics`)

Served from a thread beside the sync loop: it reads the pipelines' state, never
changes it. OpenSearch is asked directly (at most every 2 s), because an idle
subscription would only notice an outage at its next write.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from syncer import conf
from syncer.engine.pipeline import Pipeline, Status
from syncer.errors import SyncError
from syncer.sinks.opensearch.client import answer_of, sync_client, translated
from syncer.sinks.opensearch.connection import Connection
from syncer.text import redact

log = structlog.get_logger(__name__)

_JSON = "application/json"


def subscription_problem(pipeline: Pipeline, now: float, stall_after: float) -> str | None:
    """Why this subscription is not ready, in an operator's words; None when it is."""
    if pipeline.status == Status.PAUSED:
        return None  # paused on purpose: nothing to fix
    telemetry = pipeline.telemetry
    if telemetry.connected_at is None:
        # starting, reconnecting (source or console database), error, stopped
        return f"{pipeline.status}: {pipeline.message}" if pipeline.message else pipeline.status
    if not pipeline.stats.sink_available:
        return pipeline.message or "OpenSearch unavailable"
    moments = (telemetry.connected_at, pipeline.stats.last_ack_at, pipeline.source.progressed_at())
    last = max(m for m in moments if m is not None)
    if now - last > stall_after:
        return (
            f"stalled: no progress for {now - last:.0f} s (limit {stall_after:g} s); "
            f"{pipeline.status}: {pipeline.message}"
        )
    return None


@dataclass
class Readiness:
    ready: bool
    reasons: list[str] = field(default_factory=list)
    """One line per thing not ready: `subscription: why` (or `worker: why`)."""
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"ready": self.ready, "reasons": self.reasons, "subscriptions": self.subscriptions}


class OpenSearchProbe:
    """Whether OpenSearch answers: None, or why not. Asks at most every `every` seconds."""

    def __init__(self, connection: Connection, every: float = 2.0) -> None:
        self._client = sync_client(connection, timeout=2.0)
        self._every = every
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def __call__(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._checked_at >= self._every:
                self._problem = self._ask()
                self._checked_at = time.monotonic()
            return self._problem

    def _ask(self) -> str | None:
        try:
            with translated("asking OpenSearch"):
                self._client.info()
        except SyncError as exc:
            answer = answer_of(exc)
            if answer.status:
                return f"OpenSearch unavailable: it answered {answer.status} {answer.error}"
            return f"OpenSearch unavailable: cannot reach OpenSearch ({answer.error})"
        return None

    def close(self) -> None:
        self._client.close()


class ReadinessCheck:
    def __init__(
        self,
        pipelines: Callable[[], Mapping[str, Pipeline]],
        stall_after: float,
        sink_problem: Callable[[], str | None],
        worker_ready: Callable[[], str | None] | None = None,
    ) -> None:
        self._pipelines = pipelines
        self.stall_after = stall_after
        self._sink_problem = sink_problem
        self._worker_ready = worker_ready

    def __call__(self) -> Readiness:
        now = time.time()
        pipelines = dict(self._pipelines())
        result = Readiness(ready=True)
        worker_problem = self._worker_ready() if self._worker_ready is not None else None
        if worker_problem:
            result.reasons.append(redact(f"worker: {worker_problem}"))
        sink_problem = self._sink_problem() if pipelines else None
        for name, pipeline in sorted(pipelines.items()):
            problem = subscription_problem(pipeline, now, self.stall_after)
            if problem is None and pipeline.status != Status.PAUSED:
                problem = sink_problem
            if problem:
                problem = redact(problem)  # a status message may quote a DSN
                result.reasons.append(f"{name}: {problem}")
            staleness = pipeline.staleness(now)
            result.subscriptions[name] = {
                "ready": problem is None,
                "status": pipeline.status,
                "reason": problem,
                "lag_seconds": round(pipeline.stats.lag(now), 3),
                "staleness_seconds": None if staleness is None else round(staleness, 3),
            }
        result.ready = not result.reasons
        return result


DEFAULT_HOST = "127.0.0.1"
"""Only this machine by default: /ready's reasons and /metrics are not for everyone."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its whole request (and for each read or write after it):
a silent, half-sent or trickled request is dropped."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        readiness: ReadinessCheck,
        request_timeout: float,
    ) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.readiness = readiness
        self.request_timeout = request_timeout
        # One connection per thread (ThreadingHTTPServer): its deadline, per thread.
        self._deadlines = threading.local()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Each read and write: StreamRequestHandler applies no timeout of its own here.
        request.settimeout(self.request_timeout)
        # A client trickling its request a byte at a time never trips that timeout: the
        # whole request must also arrive within it, or the connection is shut.
        deadline = threading.Timer(self.request_timeout, _shut, args=(request,))
        deadline.daemon = True
        self._deadlines.timer = deadline
        deadline.start()
        try:
            super().finish_request(request, client_address)
        finally:
            deadline.cancel()

    def request_read(self) -> None:
        """The request of this thread's connection has arrived whole: lift its deadline."""
        timer: threading.Timer | None = getattr(self._deadlines, "timer", None)
        if timer is not None:
            timer.cancel()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr, which would break the JSON log.
        log.exception("worker_http_failed", client=str(client_address[0]))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.request_read()
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/health":
            self._send_json(200, {"status": "alive", "pid": os.getpid()})
        elif path == "/ready":
            readiness = self.server.readiness()
            self._send_json(200 if readiness.ready else 503, readiness.body())
        else:
            self._send_json(404, {"error": f"no page {path}; try /health, /ready or /metrics"})

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, _JSON, json.dumps(body).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds is not worth a log line


def _shut(connection: socket.socket) -> None:
    """End a connection whose request did not arrive in time (its reads return b"")."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def default_stall_after() -> float:
    """SYNCER_STALL_AFTER (60 s by default)."""
    return conf.worker().stall_after


def serve(
    port: int,
    pipelines: Callable[[], Mapping[str, Pipeline]],
    registry: CollectorRegistry,
    *,
    host: str = DEFAULT_HOST,
    stall_after: float | None = None,
    worker_ready: Callable[[], str | None] | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
) -> Callable[[], None]:
    """Listen on `host:port` in a thread; return a function that stops it.

    A connection has `request_timeout` seconds to send its whole request, and as long for
    each read and write after it: a client that sends nothing, half a request or a
    trickle costs one thread for that long, and others are served meanwhile.
    Raises OSError when the address cannot be listened on.
    """
    probe = OpenSearchProbe(conf.opensearch())
    readiness = ReadinessCheck(
        pipelines,
        default_stall_after() if stall_after is None else stall_after,
        probe,
        worker_ready,
    )
    try:
        server = _Server((host, port), registry, readiness, request_timeout)
    except OSError:
        probe.close()
        raise
    thread = threading.Thread(target=server.serve_forever, name="worker-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        probe.close()

    return stop
