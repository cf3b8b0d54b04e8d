"""One socket's outgoing messages: bounded, sent by a task of their own, dropped when full.

Events wait in a buffer of `size` messages while the sender task is blocked on a slow
client (the ASGI server's send waits while the client does not read, where the server
applies backpressure). A full buffer drops the newest event and counts it; once there is
room again, one `{"type": "dropped", "count": n, "since": t, "where": "socket"}` summary
takes the dropped events' place in the stream. A buffer that has been dropping for longer
than `behind` seconds calls `on_behind` (the socket closes: a client that cannot keep up
is better told than fed a trickle of gaps).

Events lost before they reached the socket (a `Gap` of console.live.sequences) get a
summary of their own (`"where": "upstream"`), queued just before the event that revealed
them; when that event is dropped too, the gap's count joins the buffer's own summary, so
the counts always add up.

Replies to the client's own requests go in a separate small queue that is sent first and
never dropped: a client that sends more than `CONTROL_LIMIT` requests without reading
their answers is behind too.

Flow control, for servers whose send never waits (daphne hands every frame to Twisted,
which buffers without bound): a client that set a `window` acknowledges the events it
has received (`ack`), and the sender keeps at most `window` events unacknowledged, so
the buffer fills, drops and gives up on that client as above.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable

from console.live.sequences import Gap

CONTROL_LIMIT = 100
"""Replies waiting to be sent before the client counts as behind."""


class SendBuffer:
    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        size: int,
        behind: float,
        on_behind: Callable[[], Awaitable[None]],
    ) -> None:
        self._send = send
        self.size = size
        self.behind = behind
        self._on_behind = on_behind
        self._events: deque[tuple[str, bool]] = deque()
        """(text, whether it is an event that counts against the window)."""
        self._control: deque[str] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        """Events dropped and not yet reported in a summary."""
        self.dropped_total = 0
        self.lost_upstream_total = 0
        """Events lost before they reached the socket (told in upstream summaries)."""
        self.behind_since: float | None = None
        """When the current run of drops began (wall clock), None when not behind."""
        self._tasks: list[asyncio.Task[None]] = []
        self.window: int | None = None
        """Events the client may hold unacknowledged; None: no flow control."""
        self.sent = 0
        """Events sent (drop summaries are not events)."""
        self.acked = 0

    def start(self, name: str) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"send {name}"),
            asyncio.create_task(self._watch(), name=f"send watch {name}"),
        ]

    async def stop(self) -> None:
        """Stop sending (what is still buffered is discarded); idempotent."""
        tasks, self._tasks = self._tasks, []
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)

    def offer(self, text: str, gap: Gap | None = None) -> bool:
        """Queue an event, after the summary of `gap` (what was lost upstream before it);
        False when it was dropped (never waits)."""
        if gap is not None:
            self.lost_upstream_total += gap.count
        if self.dropped and len(self._events) < self.size - 1:
            self._summarize()
        if len(self._events) >= self.size:
            if not self.dropped:
                self.behind_since = time.time()
            self.dropped += 1 + (0 if gap is None else gap.count)
            self.dropped_total += 1
            return False
        if gap is not None:
            self._events.append((gap.summary(), False))
        self._events.append((text, True))
        self._ready.set()
        return True

    def set_window(self, window: int) -> None:
        """From now on, keep at most `window` events unacknowledged (counted from now)."""
        self.window = window
        self.acked = self.sent
        self._ready.set()

    def ack(self, received: int) -> None:
        """The client has received `received` events since the socket opened."""
        self.acked = max(self.acked, min(received, self.sent))
        self._ready.set()

    def reply(self, text: str) -> None:
        """Queue the answer to a request (sent before any event, never dropped)."""
        self._control.append(text)
        self._ready.set()
        if len(self._control) > CONTROL_LIMIT and self.behind_since is None:
            self.behind_since = time.time()

    def _summarize(self) -> None:
        summary = {
            "type": "dropped",
            "count": self.dropped,
            "since": self.behind_since,
            "where": "socket",
        }
        self._events.append((json.dumps(summary), False))
        self.dropped = 0
        self.behind_since = None
        self._ready.set()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if self._control:
                await self._send(self._control.popleft())
                if len(self._control) <= CONTROL_LIMIT and not self.dropped:
                    self.behind_since = None
            elif self._events and self._may_send(self._events[0][1]):
                text, counted = self._events.popleft()
                self.sent += counted  # first: the client may ack it before the send returns
                await self._send(text)
            elif self.dropped and not self._events:
                self._summarize()  # room again, and nothing else to send: say what was lost
            else:
                self._ready.clear()

    def _may_send(self, counted: bool) -> bool:
        return not counted or self.window is None or self.sent - self.acked < self.window

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.behind / 4))
            since = self.behind_since
            if since is not None and time.time() - since > self.behind:
                await self._on_behind()
                return
