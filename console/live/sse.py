"""One subscription's live events as a server-sent event stream (`text/event-stream`).

Each stream reads from a channel of its own added to the subscription's events group,
and leaves the group when the client goes away (Django cancels the response, and
EventStreamResponse closes the stream inside it). A
comment line every `heartbeat` seconds keeps proxies from closing an idle stream. A
client reading slower than events arrive loses the excess, and is told so with a
`dropped` summary, as the worker does. The stream's caller is checked again every
LIVE_STREAM_RECHECK_SECONDS (console.live.access): once it may no longer watch, a last
`event: closed` says why (`code` as the websockets' close codes) and the stream ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import structlog
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import StreamingHttpResponse

from console.live import stats
from console.live.access import StreamGuard
from console.live.filters import EventFilter
from syncer.live.messages import Event, events_group
from syncer.text import redact

log = structlog.get_logger(__name__)

DEFAULT_HEARTBEAT = 15.0
BUFFER = 1000
"""Layer messages held for a slow client before the excess is dropped."""
RETRY_MS = 3000
"""How long EventSource waits before reconnecting after the stream ends."""


def heartbeat_interval() -> float:
    """Seconds between heartbeat comments (`LIVE_SSE_HEARTBEAT`, default 15)."""
    return float(getattr(settings, "LIVE_SSE_HEARTBEAT", DEFAULT_HEARTBEAT))


def sse_event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class EventStreamResponse(StreamingHttpResponse):
    """A `text/event-stream` response that closes its stream however the response ends.

    Django closes only the outermost iterator when the client disconnects; the stream
    inside must be closed too, or it would stay in its group, counted, until collected.
    """

    def __init__(self, stream: AsyncGenerator[str, None]) -> None:
        super().__init__(stream, content_type="text/event-stream")
        self._stream = stream
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part.encode()
        finally:
            await self._stream.aclose()


async def event_stream(
    subscription: str, event_filter: EventFilter, heartbeat: float, guard: StreamGuard
) -> AsyncGenerator[str, None]:
    """The stream's text, chunk by chunk, until the client disconnects or may no longer
    watch; `guard` holds the caller's slot, given back when the stream ends."""
    layer = get_channel_layer()
    group = events_group(subscription)
    channel = await layer.new_channel()

    async def join() -> None:
        await layer.group_add(group, channel)

    await join()
    presence = stats.Presence("sse", rejoin=join)
    await presence.enter()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(BUFFER)
    skipped = [0]  # events the buffer had no room for, not yet reported
    reader = asyncio.create_task(_read(layer, channel, queue, skipped), name=f"sse {channel}")
    watcher = asyncio.create_task(guard.watch(), name=f"sse watch {channel}")
    getter: asyncio.Future[dict[str, Any]] | None = None
    log.info(
        "live_stream_opened",
        subscription=subscription,
        filter=event_filter.as_dict(),
        client=presence.client_id,
    )
    try:
        yield f"retry: {RETRY_MS}\n: subscribed to {subscription}\n\n"
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + heartbeat
        while not reader.done():
            if _cancel_requested():
                raise asyncio.CancelledError  # the client left; a library swallowed the news
            if getter is None:
                getter = asyncio.ensure_future(queue.get())
            # asyncio.wait, not wait_for/timeout: a heartbeat due must not cancel this task,
            # whose cancellation is how Django says that the client went away.
            waited: set[asyncio.Future[Any]] = {getter, reader, watcher}
            done, _ = await asyncio.wait(
                waited,
                timeout=max(next_beat - loop.time(), 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if watcher in done:
                refusal = watcher.result()
                yield sse_event(
                    "closed", {"kind": "closed", "code": refusal.code, "reason": refusal.reason}
                )
                return
            if reader in done and getter not in done:
                break
            if not done:
                next_beat = loop.time() + heartbeat
                yield ": heartbeat\n\n"
                continue
            message, getter = getter.result(), None
            events: list[Event] = event_filter.select(message.get("events", []))
            if skipped[0]:
                events.append({"kind": "dropped", "dropped": skipped[0]})
                skipped[0] = 0
            if not events:
                continue
            yield sse_event(
                "events",
                {"kind": "events", "subscription": subscription, "events": events},
            )
            await stats.count_delivered(sum(1 for e in events if e["kind"] != "dropped"))
        # The layer failed under the reader: end the stream; EventSource reconnects.
        log.warning(
            "live_stream_reader_failed", subscription=subscription, error=redact(_failure(reader))
        )
    finally:
        if getter is not None:
            getter.cancel()
        reader.cancel()
        watcher.cancel()
        # Whatever the reader died of, the stream must still leave its group and the count.
        await asyncio.gather(reader, watcher, return_exceptions=True)
        try:
            await presence.leave()  # first: its refresh task would join the group again
        finally:
            try:
                await layer.group_discard(group, channel)
            finally:
                await guard.leave()
            log.info("live_stream_closed", subscription=subscription, client=presence.client_id)


async def _read(
    layer: Any, channel: str, queue: asyncio.Queue[dict[str, Any]], skipped: list[int]
) -> None:
    while True:
        message = await layer.receive(channel)
        if message.get("type") != "sync.events":
            continue
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            skipped[0] += len(message.get("events", []))


def _failure(task: asyncio.Task[None]) -> str:
    error = task.exception()
    return f"{type(error).__name__}: {error}" if error is not None else "stopped"


def _cancel_requested() -> bool:
    """Whether this task was asked to stop (Django cancels it when the client disconnects).

    redis-py reads with a socket timeout can absorb a cancellation arriving mid-command
    (Python 3.11), so a stream must check before it waits again, or live on unread.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
