"""The live monitor for scripts: a subscription's events as a server-sent event stream,
and the monitor's counts.

`GET /api/subscriptions/{name}/events/stream` sends what `/ws/subscriptions/<name>/events/`
sends, as `event: events` + `data: <json>` blocks, with a `: heartbeat` comment every
15 s; `op` and `doc_id_prefix` query parameters filter it. It needs the ASGI server
(daphne), and is left out of the OpenAPI schema, which cannot describe an endless stream.
A caller holds at most LIVE_STREAMS_PER_USER streams (429 beyond), and each is checked
again while open (console.live.access).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from console.api.auth import caller
from console.api.errors import FieldErrors
from console.api.permissions import VIEW_SUBSCRIPTION, requires
from console.live import sse, stats
from console.live.access import StreamCaller, StreamGuard
from console.live.filters import EventFilter, FilterError, parse_op, parse_prefix
from syncer.operations import subscriptions

router = Router(tags=["live monitor"])


class EventStatsOut(Schema):
    published: int = Field(
        description="Events the running workers published individually (sum of their last "
        "heartbeats)."
    )
    delivered: int = Field(description="Events sent to browsers and event streams.")
    dropped: int = Field(
        description="Events the running workers summarised instead of publishing (rate limit "
        "or full queue)."
    )
    connected_clients: int = Field(description="Monitor websockets and event streams open now.")
    workers: int = Field(description="Workers whose heartbeat the counts include.")


@router.get("/events/stats", response=EventStatsOut, summary="Live monitor counts")
@requires(VIEW_SUBSCRIPTION)
async def event_stats(request: HttpRequest) -> dict[str, Any]:
    """Events published, delivered and dropped, and the clients connected now.

    One reading serves every caller of the process for about a second (concurrent callers
    wait for the same one): the counts may be that old.

    Subscriptions' events also stream as server-sent events from
    `GET /api/subscriptions/{name}/events/stream` (`text/event-stream`; optional `op` and
    `doc_id_prefix` filters; a `: heartbeat` comment every 15 s).
    """
    try:
        counts = await stats.shared_stats()
    except stats.StatsUnavailable as exc:
        raise HttpError(503, str(exc)) from exc
    return {
        "published": counts.published,
        "delivered": counts.delivered,
        "dropped": counts.dropped,
        "connected_clients": counts.connected_clients,
        "workers": counts.workers,
    }


@router.get(
    "/subscriptions/{name}/events/stream",
    include_in_schema=False,
    summary="Stream a subscription's live events",
)
@requires(VIEW_SUBSCRIPTION)
async def event_stream(
    request: HttpRequest,
    name: str,
    op: Query[str | None] = None,
    doc_id_prefix: Query[str | None] = None,
) -> StreamingHttpResponse:
    """Server-sent events of one subscription, until the client disconnects."""
    event_filter = _stream_filter(op, doc_id_prefix)
    await subscriptions.anamed(name)  # else a 404
    if not isinstance(request, ASGIRequest):
        raise HttpError(
            501,
            "the event stream is served by the ASGI server: run `daphne console.asgi:application`",
        )
    guard = StreamGuard(_stream_caller(request), f"sse.{uuid.uuid4().hex}")
    refusal = await guard.enter()
    if refusal is not None:
        raise HttpError(429, refusal.reason)
    stream = sse.event_stream(name, event_filter, sse.heartbeat_interval(), guard)
    return sse.EventStreamResponse(stream)


def _stream_caller(request: HttpRequest) -> StreamCaller:
    """How the stream's caller came in: checked again, the same way, while it is open."""
    found = caller(request)
    user = found.user
    if found.token is not None:
        return StreamCaller(user.pk, user.get_username(), token_id=found.token.pk)
    return StreamCaller(user.pk, user.get_username(), session_key=request.session.session_key)


def _stream_filter(op: str | None, doc_id_prefix: str | None) -> EventFilter:
    errors: list[tuple[str, str]] = []
    try:
        chosen_op = parse_op(op)
    except FilterError as exc:
        errors.append(("op", str(exc)))
    try:
        prefix = parse_prefix(doc_id_prefix)
    except FilterError as exc:
        errors.append(("doc_id_prefix", str(exc)))
    if errors:
        raise FieldErrors(errors)
    return EventFilter(op=chosen_op, doc_id_prefix=prefix)
