"""`POST /api/subscriptions/{name}/documents/stream`: NDJSON operations into a push queue.

The body is one operation per line, `Content-Type: application/x-ndjson`; the answer
streams one status line per input line as its group is committed, then a summary
(`syncer.operations.push` says the formats). Needs `syncer.change_subscription`: a
view-only token is refused with 403, a revoked one with 401. Refused before any line is
read: 404 no such subscription, 409 not a push subscription, 415 another content type,
429 (with `Retry-After`) when its queue is at SYNCER_PUSH_QUEUE_LIMIT.

Under daphne the whole body has arrived before the view runs (Twisted receives it, in
memory up to 100 KB and then in a temporary file; Django's ASGI handler spools it again,
in memory up to FILE_UPLOAD_MAX_MEMORY_SIZE, then on disk). The view reads it from there
64 KB at a time and never holds more than one line and one commit group, so its memory
is bounded by SYNCER_PUSH_MAX_LINE_BYTES and SYNCER_PUSH_COMMIT_LINES whatever the
body's size; bytes past SYNCER_PUSH_MAX_REQUEST_BYTES are never read (a reverse proxy's
body limit is what bounds the disk the server spends on them).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from ninja import Router
from ninja.errors import HttpError

from console.api import documents
from console.api.errors import Conflict, respond
from console.api.permissions import CHANGE_SUBSCRIPTION, VIEW_SUBSCRIPTION, requires
from syncer.errors import NotPushable, PushQueueFull
from syncer.operations import push, subscriptions

router = Router(tags=["push"])


class StatusStream(StreamingHttpResponse):
    """The status lines; the push (and its database connection) ends with the response,
    however it ends (Django closes only the outermost iterator on a disconnect)."""

    def __init__(self, stream: AsyncGenerator[bytes, None]) -> None:
        super().__init__(stream, content_type=push.CONTENT_TYPE)
        self._stream = stream
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # nginx: pass each status line on at once

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                if part:
                    yield part
        finally:
            await self._stream.aclose()


@router.post(
    "/{name}/documents/stream",
    summary="Push documents (NDJSON) to a push subscription",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                push.CONTENT_TYPE: {
                    "schema": {"type": "string"},
                    "example": '{"op": "upsert", "id": "42", "doc": {"title": "Dune"}}\n'
                    '{"op": "delete", "id": "41"}\n',
                }
            },
        },
        "responses": {
            200: {
                "description": "One status line per input line, then a summary line.",
                "content": {push.CONTENT_TYPE: {"schema": {"type": "string"}}},
            }
        },
    },
)
@requires(CHANGE_SUBSCRIPTION)
async def push_documents(request: HttpRequest, name: str) -> HttpResponse | StreamingHttpResponse:
    """Queue upserts and deletes, one JSON object per line:
    `{"op": "upsert", "id": ..., "doc": {...}}` or `{"op": "delete", "id": ...}`.

    Each line is answered `{"line": n, "status": "accepted", "position": p}` once it is
    committed to the subscription's queue (durable: the worker indexes it even if it dies
    first), or `{"line": n, "status": "rejected", "error": ...}` alone; a
    `{"status": "stopped", ...}` line says where the request stopped (request too large,
    queue full, database unavailable) and a summary line ends the answer. 429 with
    `Retry-After` when the queue is full before the first line: wait and send again.
    """
    subscription = await subscriptions.anamed(name)
    try:
        push.refuse_unless_pushable(subscription)
    except NotPushable as exc:
        raise Conflict(str(exc)) from exc
    content_type = request.content_type or ""
    if content_type != push.CONTENT_TYPE:
        raise HttpError(
            415,
            f"send the operations as {push.CONTENT_TYPE} (one JSON object per line), "
            f"not {content_type or 'no Content-Type'}",
        )
    try:
        await push.check_room(subscription)
    except PushQueueFull as exc:
        return _queue_full(exc)
    return StatusStream(push.statuses(subscription, request.read))


def _queue_full(exc: PushQueueFull) -> HttpResponse:
    body: dict[str, Any] = {"detail": str(exc), "queued": exc.queued, "limit": exc.limit}
    response = respond(429, body)
    response["Retry-After"] = str(exc.retry_after)
    return response


@router.get("/{name}/documents/stream", include_in_schema=False)
@requires(VIEW_SUBSCRIPTION)
async def document_called_stream(request: HttpRequest, name: str) -> dict[str, Any]:
    """The document whose id is `stream`: this path's POST would hide it otherwise."""
    return await documents.get_document(request, name, "stream")
