"""Websocket consumers of the live monitor: relay layer messages to staff browsers.

Close codes (after the handshake, so that browsers can read them): 4401 not logged in
(or logged out, or deactivated, while open), 4403 not staff or without the permission to
view subscriptions, 4404 no such subscription, 4429 too many live streams open for this
user (console.live.access). An open socket's caller is checked again every
LIVE_STREAM_RECHECK_SECONDS. Consumers only read from the layer; a slow browser costs
its own buffer, never the worker.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console.live import access, stats
from console.live.access import NO_SUCH_SUBSCRIPTION, StreamCaller, StreamGuard
from console.live.filters import EventFilter, FilterError, parse_client_message
from syncer.live.messages import MONITOR_GROUP, events_group
from syncer.models import Subscription

log = structlog.get_logger(__name__)


def browser_message(message: dict[str, Any], kind: str) -> dict[str, Any]:
    """The layer message as a browser receives it: `type` replaced by `kind`."""
    relayed = {key: value for key, value in message.items() if key != "type"}
    return {"kind": kind, **relayed}


class StaffConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """A socket for active staff users only; joins its groups once they are let in."""

    presence_kind = "ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.joined: list[str] = []
        self.presence: stats.Presence | None = None
        self.guard: StreamGuard | None = None
        self.watcher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        refusal = await database_sync_to_async(access.refusal_of)(user)
        if refusal is not None:
            await self.refuse(refusal.code)
            return
        groups = await self.groups_to_join()
        if groups is None:
            return
        session = self.scope.get("session")
        caller = StreamCaller(
            user.pk, user.get_username(), session_key=getattr(session, "session_key", None)
        )
        guard = StreamGuard(caller, f"{self.presence_kind}.{self.channel_name}")
        refusal = await guard.enter()
        if refusal is not None:
            await self.refuse(refusal.code)
            return
        self.guard = guard
        # Joined before the handshake ends: once the browser sees the socket open, it
        # receives everything published from then on.
        self.joined = groups
        await self.join()
        self.presence = stats.Presence(self.presence_kind, rejoin=self.join)
        await self.presence.enter()
        await self.accept()
        self.watcher = asyncio.create_task(self.watch(guard), name=f"watch {self.channel_name}")

    async def watch(self, guard: StreamGuard) -> None:
        """Close the socket once its caller may no longer watch."""
        refusal = await guard.watch()
        await self.release()  # first: no message reaches a caller no longer allowed
        await self.close(code=refusal.code)

    async def join(self) -> None:
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)

    async def refuse(self, code: int) -> None:
        log.info("live_socket_refused", path=self.scope.get("path"), code=code)
        # Accept first: a close code sent during the handshake never reaches the browser.
        await self.accept()
        await self.close(code=code)

    async def groups_to_join(self) -> list[str] | None:
        """The groups of this socket, or None after refusing it."""
        raise NotImplementedError

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when the consumer crashed or was killed without a disconnect: an orphan
            # refresh task would keep it counted, and in its groups, forever.
            await self.release()

    async def disconnect(self, code: int) -> None:
        await self.release()

    async def release(self) -> None:
        """Stop counting the socket and leave its groups (idempotent)."""
        watcher, self.watcher = self.watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if self.guard is not None:
            guard, self.guard = self.guard, None
            await guard.leave()
        if self.presence is not None:  # first: its refresh task would join the groups again
            presence, self.presence = self.presence, None
            await presence.leave()
        joined, self.joined = self.joined, []
        for group in joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.joined:
            return  # refused or closing: nothing to answer
        if text_data is None:
            await self.send_error("send text frames holding JSON")
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self.send_error("not JSON")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_error("this socket takes no messages")

    async def send_error(self, message: str) -> None:
        await self.send_json({"kind": "error", "message": message})


class MonitorConsumer(StaffConsumer):
    """`/ws/monitor/`: every subscription's lag snapshot and every worker's heartbeat."""

    presence_kind = "monitor"

    async def groups_to_join(self) -> list[str] | None:
        return [MONITOR_GROUP]

    async def sync_snapshots(self, message: dict[str, Any]) -> None:
        """Send each subscription's lag snapshot to the browser, one message each."""
        for snapshot in message.get("snapshots", []):
            await self.sync_snapshot(snapshot)

    async def sync_snapshot(self, message: dict[str, Any]) -> None:
        """Send a subscription's lag snapshot to the browser (also what a worker of the
        previous release sends, one per layer message)."""
        await self.send_json(browser_message(message, "snapshot"))

    async def worker_heartbeat(self, message: dict[str, Any]) -> None:
        """Send a worker's heartbeat to the browser, and note its counts for the stats."""
        await self.send_json(browser_message(message, "heartbeat"))
        await stats.record_heartbeat(message)


class SubscriptionEventsConsumer(StaffConsumer):
    """`/ws/subscriptions/<name>/events/`: one subscription's events, through a filter."""

    presence_kind = "events"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscription = ""
        self.filter = EventFilter()

    async def groups_to_join(self) -> list[str] | None:
        self.subscription = str(self.scope["url_route"]["kwargs"]["name"])
        if not await _subscription_exists(self.subscription):
            await self.refuse(NO_SUCH_SUBSCRIPTION)
            return None
        return [events_group(self.subscription)]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Replace the socket's filter and confirm it."""
        try:
            self.filter = parse_client_message(content)
        except FilterError as exc:
            await self.send_error(str(exc))
            return
        await self.send_json({"kind": "filter", "filter": self.filter.as_dict()})

    async def sync_events(self, message: dict[str, Any]) -> None:
        """Send the events that pass the socket's filter to the browser."""
        events = self.filter.select(message.get("events", []))
        if not events:
            return
        await self.send_json(
            {"kind": "events", "subscription": message.get("subscription"), "events": events}
        )
        await stats.count_delivered(sum(1 for e in events if e["kind"] != "dropped"))


@database_sync_to_async  # type: ignore[untyped-decorator]
def _subscription_exists(name: str) -> bool:
    return Subscription.objects.named(name).exists()
