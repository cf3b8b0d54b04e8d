"""An HTTP proxy in front of a real OpenSearch that injects the faults a cluster produces.

`TcpProxy` takes the whole server away; `FaultProxy` keeps it up and misbehaves per
request: whole-request failures (`fail_requests`), slowness (`delay`) and per-item
rejections inside a `_bulk` (`reject_items`). Everything else passes through byte for
byte, error statuses included. Rejected bulk items are cut from the request before it is
forwarded, so the server never applies them, exactly as a rejecting cluster would not.

Only gzip is understood as a content encoding (what opensearch-py's `http_compress`
uses); the fault settings may be changed from any thread while the proxy runs.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# Per-connection headers (RFC 9110 7.6.1) and those aiohttp must set for the hop it makes.
_HOP_BY_HOP = frozenset(
    "connection keep-alive proxy-connection te trailer transfer-encoding upgrade "
    "content-length host".split()
)
_JSON = "application/json; charset=UTF-8"
_DEFAULT_ERRORS = {
    429: ("es_rejected_execution_exception", "rejected execution of coordinating operation"),
    503: ("cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered];"),
}


@dataclass(frozen=True)
class FaultStats:
    requests: int = 0  # every request the proxy received
    failed: int = 0  # answered by `fail_requests`, never forwarded
    delayed: int = 0
    rejected_items: int = 0
    forwarded: int = 0  # requests that reached the server


@dataclass
class _Failure:
    status: int
    remaining: int | None
    path_contains: str
    body: bytes


@dataclass
class _Rejection:
    matches: Callable[[str], bool]
    status: int
    error: dict[str, str]
    count: int | None
    done: Counter[str] = field(default_factory=Counter)

    def take(self, doc_id: str) -> bool:
        """Whether to reject this item now; uses up one of its id's rejections."""
        if not self.matches(doc_id) or (self.count is not None and self.done[doc_id] >= self.count):
            return False
        self.done[doc_id] += 1
        return True

    def item(self, item: _BulkItem, index: str | None) -> dict[str, Any]:
        """The response item a cluster gives for `item` when it rejects it."""
        meta = {"_index": item.meta.get("_index", index), "_id": str(item.meta["_id"])}
        return {item.op: {**meta, "status": self.status, "error": dict(self.error)}}


@dataclass
class _BulkItem:
    op: str  # index, create, update or delete
    meta: dict[str, Any]
    lines: list[bytes]  # the action line, then the source line unless a delete


class FaultProxy:
    def __init__(self, target_url: str, host: str = "127.0.0.1") -> None:
        self.target = str(URL(target_url)).rstrip("/")
        self.host = host
        self._port = 0
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._delays: list[tuple[float, str]] = []
        self._rejections: list[_Rejection] = []
        self._counts: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self.host}:{self._port}"

    @property
    def stats(self) -> FaultStats:
        with self._lock:
            return FaultStats(**self._counts)

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("FaultProxy is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="FaultProxy", daemon=True
        )
        self._thread.start()
        try:
            self._port = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(10)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread, self._loop, self._port = self._loop, self._thread, None, 0
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()

    def fail_requests(
        self,
        status: int = 503,
        count: int | None = 1,
        path_contains: str = "",
        body: Mapping[str, Any] | str | bytes | None = None,
    ) -> None:
        """Answer the next `count` matching requests (None: all) with `status`."""
        if count == 0:
            return
        if body is None:
            kind, reason = _DEFAULT_ERRORS.get(status, ("exception", f"HTTP {status}"))
            cause = {"type": kind, "reason": f"{reason} [injected by FaultProxy]"}
            body = {"error": {"root_cause": [cause], **cause}, "status": status}
        raw = body.encode() if isinstance(body, str) else body
        raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
        with self._lock:
            self._failures.append(_Failure(status, count, path_contains, raw))

    def delay(self, seconds: float, path_contains: str = "") -> None:
        """Hold every matching request `seconds` before answering it (the longest delay wins)."""
        with self._lock:
            self._delays.append((seconds, path_contains))

    def reject_items(
        self,
        doc_ids: Callable[[str], bool] | Iterable[str],
        status: int = 429,
        error_type: str = "es_rejected_execution_exception",
        reason: str = "rejected execution of bulk item [injected by FaultProxy]",
        count: int | None = None,
    ) -> None:
        """Reject matching `_bulk` items, each id `count` times (None: always), unapplied."""
        if isinstance(doc_ids, str):  # one id, not the set of its characters
            doc_ids = [doc_ids]
        matches = doc_ids if callable(doc_ids) else frozenset(doc_ids).__contains__
        rejection = _Rejection(matches, status, {"type": error_type, "reason": reason}, count)
        with self._lock:
            self._rejections.append(rejection)

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
            self._delays.clear()
            self._rejections.clear()

    async def _open(self) -> int:
        # Forward only what the client sent: no added Accept-Encoding, User-Agent and so on,
        # and bodies as bytes, so gzip passes through still compressed.
        skip = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
        self._session = aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=skip, timeout=aiohttp.ClientTimeout()
        )
        app = web.Application(client_max_size=100 * 1024 * 1024)  # OpenSearch's default limit
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A request still held by `delay` must not keep `stop` waiting long (it waits twice).
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, auto_decompress=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        return int(self._runner.addresses[0][1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self._counts["requests"] += 1
            failure = next((f for f in self._failures if f.path_contains in request.path), None)
            if failure is not None and failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
            held = max((s for s, p in self._delays if p in request.path), default=0.0)
            if held:
                self._counts["delayed"] += 1
        await asyncio.sleep(held)
        if failure is not None:
            with self._lock:
                self._counts["failed"] += 1
            headers = {"Content-Type": _JSON}
            return web.Response(status=failure.status, headers=headers, body=failure.body)
        if request.path.rstrip("/").split("/")[-1] == "_bulk":
            return await self._bulk(request, body)
        return _response(request, *await self._forward(request, body))

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        assert self._session is not None
        url = URL(self.target + request.raw_path, encoded=True)  # the client's escaping and query
        async with self._session.request(
            request.method, url, headers=_end_to_end(request.headers), data=body or None
        ) as upstream:
            content = await upstream.read()
        with self._lock:
            self._counts["forwarded"] += 1
        return upstream.status, upstream.headers, content

    async def _bulk(self, request: web.Request, body: bytes) -> web.StreamResponse:
        encoding = request.headers.get("Content-Encoding", "")
        try:
            items = _parse_bulk(_decode(body, encoding))
        except (ValueError, OSError):  # not a body we understand: the server will say why
            items = []
        # Decided before forwarding, so used up even if the server then fails the request.
        with self._lock:
            rejected = {i: rej for i, item in enumerate(items) if (rej := self._rejecter(item))}
            self._counts["rejected_items"] += len(rejected)
        if not rejected:
            return _response(request, *await self._forward(request, body))
        kept = [item for i, item in enumerate(items) if i not in rejected]
        if kept:
            lines = [line for item in kept for line in item.lines]
            sent = _encode(b"\n".join([*lines, b""]), encoding)
            status, headers, content = await self._forward(request, sent)
            if status != 200:  # the whole request failed: that is the answer
                return _response(request, status, headers, content)
            result = json.loads(_decode(content, headers.get("Content-Encoding", "")))
        else:  # nothing left to send (an empty _bulk is a 400); a rejecting cluster says 200
            status, headers = 200, CIMultiDictProxy(CIMultiDict({"Content-Type": _JSON}))
            result = {"took": 0, "items": []}
        if len(result["items"]) != len(kept):
            raise RuntimeError(f"{len(kept)} bulk items sent, {len(result['items'])} answered")
        answered = iter(result["items"])
        index = _path_index(request.path)
        result["items"] = [
            rejected[i].item(item, index) if i in rejected else next(answered)
            for i, item in enumerate(items)
        ]
        result["errors"] = True
        content = _encode(json.dumps(result).encode(), headers.get("Content-Encoding", ""))
        return _response(request, status, headers, content)

    def _rejecter(self, item: _BulkItem) -> _Rejection | None:
        doc_id = item.meta.get("_id") if isinstance(item.meta, dict) else None
        if doc_id is None:  # an id the server makes up cannot be named in advance
            return None
        return next((r for r in self._rejections if r.take(str(doc_id))), None)


def _parse_bulk(body: bytes) -> list[_BulkItem]:
    lines = [line for line in body.split(b"\n") if line.strip()]
    items: list[_BulkItem] = []
    while lines:
        action = json.loads(lines[0])
        if not isinstance(action, dict) or len(action) != 1:
            raise ValueError(f"not a bulk action: {lines[0]!r}")
        ((op, meta),) = action.items()
        width = 1 if op == "delete" else 2
        items.append(_BulkItem(op, meta, lines[:width]))
        del lines[:width]
    return items


def _path_index(path: str) -> str | None:
    """The index named in the path (`/{index}/_bulk`), the default for the items."""
    parts = path.strip("/").split("/")
    return parts[0] if len(parts) == 2 else None


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP)


def _response(
    request: web.Request, status: int, headers: CIMultiDictProxy[str], content: bytes
) -> web.Response:
    passed = _end_to_end(headers)
    if request.method == "HEAD" and "Content-Length" in headers:
        passed["Content-Length"] = headers["Content-Length"]  # the size a GET would have
    return web.Response(status=status, headers=passed, body=content or None)


def _decode(data: bytes, encoding: str) -> bytes:
    return gzip.decompress(data) if encoding.lower() == "gzip" else data


def _encode(data: bytes, encoding: str) -> bytes:
    return gzip.compress(data) if encoding.lower() == "gzip" else data
