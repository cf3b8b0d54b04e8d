"""`/ws/live/`: a client's live subscriptions, registered and delivered over one socket.

Who: an API token in the handshake's `Authorization: Bearer` header, or in the first
message (`{"type": "auth", "token": ...}` within LIVE_WS_AUTH_SECONDS), or a browser's
staff session cookie. The caller must be an active staff user with
`syncer.view_subscription`; it is checked again every LIVE_STREAM_RECHECK_SECONDS (a
token revoked while the socket is open closes it), and the socket counts among the
user's LIVE_STREAMS_PER_USER streams (console.live.access).

What: the client registers, resumes, renews and deletes its live subscriptions through
the same operations as the REST API (syncer.operations.live_subscriptions), with the same
permissions (register: add_livesubscription; resume: view_ and change_livesubscription;
heartbeat: change_; delete: delete_), errors and quotas, as JSON messages
(console.live.live_messages). The socket joins the Channels group of each live
subscription it registered or resumed, and forwards the worker's `live.matched`
messages as `{"type": "event", ...}` through a bounded send buffer (console.live.send_buffer).
Under daphne, whose send never waits for the client, only a client that turned on flow
control (`flow` {window}, then `ack` {received}) can be found slow and told `dropped`;
without it, daphne's own ping timeout ends a client that stopped reading. Events lost
before they reached the socket (the Channels layer drops beyond its `capacity`) show as
gaps in the worker's numbers (console.live.sequences), told as `dropped` with
`"where": "upstream"`.

Tied to the socket's life: while it is open, the socket renews its live subscriptions
every TTL/3 itself. When it closes they are *not* deleted: they expire a TTL later
unless a socket resumes them. A gateway that reconnects within the TTL with the same
gateway_id sends `resume` and loses nothing registered; events matched while no socket
was in the group are not replayed (use NATS delivery for that).

Close codes: 4401 no or bad credentials (or revoked while open), 4403 not staff or
without the permission, 4429 too many live streams for this user, 4008 the client read
too slowly for LIVE_WS_BEHIND_SECONDS. Daphne does not pass a close reason on, so a
`{"type": "closing", "code", "reason"}` message comes first.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError

from console.live import access
from console.live.access import NOT_AUTHENTICATED, Refusal, StreamCaller, StreamGuard
from console.live.live_messages import (
    Ack,
    Auth,
    BadMessage,
    Delete,
    Flow,
    Heartbeat,
    Register,
    Resume,
    bad_message,
    dumps,
    error,
    item,
    operation_error,
    parse,
)
from console.live.send_buffer import SendBuffer
from console.live.sequences import Sequences
from console.model_permissions import (
    ADD_LIVE_SUBSCRIPTION,
    CHANGE_LIVE_SUBSCRIPTION,
    DELETE_LIVE_SUBSCRIPTION,
    VIEW_LIVE_SUBSCRIPTION,
    VIEW_SUBSCRIPTION,
)
from console.models import ApiToken, hash_token
from syncer import conf
from syncer.live.events import live_group
from syncer.models import LiveSubscription
from syncer.operations import live_subscriptions
from syncer.operations.live_subscriptions import Registration
from syncer.text import redact

log = structlog.get_logger(__name__)

BEHIND = 4008
DEFAULT_AUTH_SECONDS = 5.0
DEFAULT_SEND_BUFFER = 1000
DEFAULT_BEHIND_SECONDS = 10.0
_MAX_TOKEN_LENGTH = 200
_MAX_REASON_BYTES = 123  # what a close frame can carry
JOINS_PER_PROCESS = 32
"""Group joins and leaves (Redis commands) in flight at once over all the sockets of a
process: the layer's Redis pool holds 100 connections and refuses (not waits) beyond, so
20 sockets leaving 100 groups each at once would take them all."""
_join_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def join_slots() -> asyncio.Semaphore:
    """This event loop's bound on group joins and leaves in flight."""
    loop = asyncio.get_running_loop()
    slots = _join_slots.get(loop)
    if slots is None:
        slots = _join_slots[loop] = asyncio.Semaphore(JOINS_PER_PROCESS)
    return slots


REQUIRES: dict[type, tuple[str, ...]] = {
    Register: (ADD_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION),
    Resume: (VIEW_LIVE_SUBSCRIPTION, CHANGE_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION),
    Heartbeat: (CHANGE_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION),
    Delete: (DELETE_LIVE_SUBSCRIPTION,),
}
"""The permissions of each request: the API's for the same operation."""


def auth_seconds() -> float:
    """How long a socket without credentials may take to send `auth` (LIVE_WS_AUTH_SECONDS)."""
    return float(getattr(settings, "LIVE_WS_AUTH_SECONDS", DEFAULT_AUTH_SECONDS))


def send_buffer_size() -> int:
    """Events one socket holds for a slow client before dropping (LIVE_WS_SEND_BUFFER)."""
    return int(getattr(settings, "LIVE_WS_SEND_BUFFER", DEFAULT_SEND_BUFFER))


def behind_seconds() -> float:
    """How long a socket may keep dropping before it is closed (LIVE_WS_BEHIND_SECONDS)."""
    return float(getattr(settings, "LIVE_WS_BEHIND_SECONDS", DEFAULT_BEHIND_SECONDS))


@dataclass(frozen=True)
class Admitted:
    """A caller let in: its user and its token (None for a session)."""

    caller: StreamCaller
    user: User
    read_only: bool = False


@dataclass
class Outcome:
    """A request's answer, and the live subscriptions the socket now holds or let go."""

    answer: dict[str, Any]
    hold: list[uuid.UUID] = field(default_factory=list)
    let_go: list[uuid.UUID] = field(default_factory=list)


def bearer(scope: dict[str, Any]) -> str | None:
    """The token of the handshake's `Authorization: Bearer` header, if it has one."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


def _token_caller(text: str) -> Admitted | Refusal:
    found = None
    if text and len(text) <= _MAX_TOKEN_LENGTH:
        found = ApiToken.objects.select_related("user").filter(key_hash=hash_token(text)).first()
    if found is None:
        return Refusal(NOT_AUTHENTICATED, "invalid API token; check it, or ask for a new one")
    if found.revoked_at is not None:
        return Refusal(NOT_AUTHENTICATED, "this API token has been revoked; ask for a new one")
    refusal = access.refusal_of(found.user)
    if refusal is not None:
        return refusal
    user = found.user
    caller = StreamCaller(user.pk, user.get_username(), token_id=found.pk)
    return Admitted(caller, user, read_only=found.read_only)


def _session_caller(user: Any, session_key: str | None) -> Admitted | Refusal:
    refusal = access.refusal_of(user)
    if refusal is not None:
        return refusal
    return Admitted(StreamCaller(user.pk, user.get_username(), session_key=session_key), user)


def _missing_permission(user: User, read_only: bool, permissions: tuple[str, ...]) -> str | None:
    for permission in permissions:
        may_change = not read_only or permission.partition(".")[2].startswith("view_")
        if not may_change or not user.has_perm(permission):
            return permission
    return None


def _perform(admitted: Admitted, request: Register | Resume | Heartbeat | Delete) -> Outcome:
    """Carry out `request` as the caller's user, read afresh (a permission taken away
    since the socket opened counts)."""
    user = User.objects.get(pk=admitted.caller.user_id)
    kind = request.type
    missing = _missing_permission(user, admitted.read_only, REQUIRES[type(request)])
    if missing is not None:
        detail = f"this request needs the permission {missing}, which this caller does not have"
        if admitted.read_only:
            detail += " (a read-only token may only view)"
        return Outcome(error(kind, request.ref, 403, detail))
    if isinstance(request, Register):
        registrations = [
            Registration(
                e.gateway_id, e.subscription, e.filter, LiveSubscription.Delivery.WEBSOCKET
            )
            for e in request.subscriptions
        ]
        created = live_subscriptions.register(user, registrations)
        answer: dict[str, Any] = {
            "type": "registered",
            "ref": request.ref,
            "items": [item(c) for c in created],
        }
        return Outcome(answer, hold=[c.id for c in created])
    if isinstance(request, Resume):
        found = live_subscriptions.of_gateway(
            user, request.gateway_id, LiveSubscription.Delivery.WEBSOCKET
        )
        renewed = live_subscriptions.heartbeat_ids(user, [live.id for live in found])
        kept = [live for live in found if live.id in renewed.ids]
        # Ids only: a gateway may resume 10,000 (its quota); their filters it knows, or
        # lists through the API.
        answer = {
            "type": "resumed",
            "ref": request.ref,
            "gateway_id": request.gateway_id,
            "count": len(kept),
            "ids": [str(live.id) for live in kept],
            "expires_at": renewed.expires_at.isoformat() if kept else None,
        }
        return Outcome(answer, hold=[live.id for live in kept])
    if isinstance(request, Heartbeat):
        renewed = live_subscriptions.heartbeat_gateway(user, request.gateway_id)
        answer = {
            "type": "heartbeat",
            "ref": request.ref,
            "gateway_id": request.gateway_id,
            "renewed": renewed.count,
            "expires_at": renewed.expires_at.isoformat(),
        }
        return Outcome(answer)
    live_subscriptions.delete(user, request.id)
    return Outcome(
        {"type": "deleted", "ref": request.ref, "id": str(request.id)}, let_go=[request.id]
    )


def _perform_answering_errors(
    admitted: Admitted, request: Register | Resume | Heartbeat | Delete
) -> Outcome:
    try:
        return _perform(admitted, request)
    except Exception as exc:
        answer = operation_error(exc, request.type, request.ref)
        if answer is None:
            raise
        return Outcome(answer)


def _renew(admitted: Admitted, ids: list[uuid.UUID]) -> frozenset[uuid.UUID]:
    user = User.objects.get(pk=admitted.caller.user_id)
    return live_subscriptions.heartbeat_ids(user, ids).ids


class LiveSubscriptionsConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admitted: Admitted | None = None
        self.guard: StreamGuard | None = None
        self.buffer: SendBuffer | None = None
        self.held: set[uuid.UUID] = set()
        """The live subscriptions whose groups this socket is in."""
        self.sequences = Sequences()
        """The worker's last message number per live subscription: a gap is told."""
        self.tasks: list[asyncio.Task[None]] = []
        self.ending = False

    # -- opening: who is calling ---------------------------------------------------------

    async def connect(self) -> None:
        # Accepted at once: a close code (and the `closing` message) reach the client only
        # on an open socket, and the token may come in the first message.
        await self.accept()
        self.buffer = SendBuffer(
            self.send_text, send_buffer_size(), behind_seconds(), self.fell_behind
        )
        self.buffer.start(self.channel_name)
        token = bearer(self.scope)
        if token is not None:
            await self.admit(await database_sync_to_async(_token_caller)(token))
            return
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            session_key = getattr(self.scope.get("session"), "session_key", None)
            await self.admit(await database_sync_to_async(_session_caller)(user, session_key))
            return
        self.tasks.append(
            asyncio.create_task(self.auth_deadline(), name=f"auth {self.channel_name}")
        )

    async def auth_deadline(self) -> None:
        seconds = auth_seconds()
        await asyncio.sleep(seconds)
        if self.admitted is None:
            await self.end(
                NOT_AUTHENTICATED,
                f"no credentials within {seconds:g} s: send the Authorization: Bearer header, "
                'or {"type": "auth", "token": "..."} as the first message',
            )

    async def admit(self, found: Admitted | Refusal) -> None:
        if isinstance(found, Refusal):
            await self.end(found.code, found.reason)
            return
        guard = StreamGuard(found.caller, f"live.{self.channel_name}")
        refusal = await guard.enter()
        if refusal is not None:
            await self.end(refusal.code, refusal.reason)
            return
        self.guard, self.admitted = guard, found
        self.tasks.append(asyncio.create_task(self.watch(guard), name=f"watch {self.channel_name}"))
        self.tasks.append(asyncio.create_task(self.keep(), name=f"keep {self.channel_name}"))
        ttl = conf.live_subscriptions().ttl.total_seconds()
        log.info("live_socket_opened", user=found.caller.username, client=self.channel_name)
        self.reply(
            {
                "type": "ready",
                "user": found.caller.username,
                "ttl_seconds": ttl,
                "renewed_every_seconds": ttl / 3,
            }
        )

    async def watch(self, guard: StreamGuard) -> None:
        refusal = await guard.watch()
        await self.end(refusal.code, refusal.reason)

    # -- requests ------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.ending:
            return
        try:
            request = parse(text_data)
        except BadMessage as exc:
            if self.admitted is None:
                await self.end(NOT_AUTHENTICATED, f"authenticate first: {exc}")
            else:
                self.reply(bad_message(exc, None))
            return
        if isinstance(request, Auth):
            if self.admitted is not None or self.guard is not None:
                self.reply(error("auth", request.ref, 400, "this socket is authenticated already"))
                return
            await self.admit(await database_sync_to_async(_token_caller)(request.token))
            return
        if self.admitted is None:
            await self.end(
                NOT_AUTHENTICATED, 'authenticate first: send {"type": "auth", "token": "..."}'
            )
            return
        if isinstance(request, Ack | Flow):
            self.flow(request)
            return
        outcome = await database_sync_to_async(_perform_answering_errors)(self.admitted, request)
        if isinstance(request, Register):
            for live_id in outcome.hold:  # new: their first event is number 1
                self.sequences.expect(live_id.hex)
        await self.hold(outcome.hold)
        await self.let_go(outcome.let_go)
        self.reply(outcome.answer)

    def flow(self, request: Ack | Flow) -> None:
        if self.buffer is None:
            return
        if isinstance(request, Flow):
            self.buffer.set_window(request.window)
            self.reply({"type": "flow", "ref": request.ref, "window": request.window})
        elif self.buffer.window is None:
            self.reply(
                error(
                    "ack",
                    request.ref,
                    400,
                    'no flow control: send {"type": "flow", "window": n} first',
                )
            )
        else:
            self.buffer.ack(request.received)

    def reply(self, message: dict[str, Any]) -> None:
        if self.buffer is not None:
            self.buffer.reply(dumps(message))

    async def send_text(self, text: str) -> None:
        await self.send(text_data=text)

    # -- the socket's live subscriptions ---------------------------------------------------

    async def hold(self, ids: list[uuid.UUID]) -> None:
        # Joined before the answer is sent: once the client reads it, events flow.
        await self._each_group(self.channel_layer.group_add, ids)
        self.held.update(ids)

    async def let_go(self, ids: list[uuid.UUID] | set[uuid.UUID]) -> None:
        listed = list(ids)
        self.held.difference_update(listed)
        for live_id in listed:
            self.sequences.forget(live_id.hex)
        await self._each_group(self.channel_layer.group_discard, listed)

    async def _each_group(
        self, action: Callable[[str, str], Awaitable[None]], ids: list[uuid.UUID]
    ) -> None:
        slots = join_slots()

        async def one(live_id: uuid.UUID) -> None:
            async with slots:
                await action(live_group(live_id), self.channel_name)

        for start in range(0, len(ids), 4 * JOINS_PER_PROCESS):
            await asyncio.gather(*(one(i) for i in ids[start : start + 4 * JOINS_PER_PROCESS]))

    async def keep(self) -> None:
        """Renew the socket's live subscriptions every TTL/3 while it is open; let go of
        those deleted (through the API or the admin) or expired meanwhile. Groups are
        joined again well before the layer forgets them (its group expiry)."""
        every = conf.live_subscriptions().ttl.total_seconds() / 3
        rejoin_every = float(getattr(self.channel_layer, "group_expiry", 86400)) / 2
        loop = asyncio.get_running_loop()
        joined_at = loop.time()
        while True:
            await asyncio.sleep(every)
            held = list(self.held)
            if not held or self.admitted is None:
                continue
            try:
                alive = await database_sync_to_async(_renew)(self.admitted, held)
            except DatabaseError as exc:
                log.warning(
                    "live_socket_renew_failed", client=self.channel_name, error=redact(str(exc))
                )
                continue
            gone = set(held) - alive
            if gone:
                await self.let_go(gone)
                self.reply({"type": "gone", "ids": sorted(str(i) for i in gone)})
            if loop.time() - joined_at > rejoin_every:
                await self.hold(list(self.held))
                joined_at = loop.time()

    # -- delivery -------------------------------------------------------------------------

    async def live_matched(self, message: dict[str, Any]) -> None:
        """A matched event from the worker (syncer.live.events.live_message): forward it,
        after a `dropped` summary when its number shows that some were lost on the way,
        or drop it when the client is behind. Never waits on the client."""
        event = message.get("event")
        if self.buffer is None or not isinstance(event, str) or not event.startswith('{"'):
            return
        # The event's own JSON with the type put first: no parse, no second encoding.
        self.buffer.offer('{"type":"event",' + event[1:], self.sequences.gap(message))

    def lost_upstream(self) -> int:
        """Events lost before they reached this socket (told to the client as gaps)."""
        return 0 if self.buffer is None else self.buffer.lost_upstream_total

    async def fell_behind(self) -> None:
        dropped = 0 if self.buffer is None else self.buffer.dropped_total
        log.warning("live_socket_behind", client=self.channel_name, dropped=dropped)
        await self.end(
            BEHIND,
            f"the client read too slowly: events were dropped for over {behind_seconds():g} s "
            f"({dropped} in all); reconnect and resume",
        )

    # -- closing --------------------------------------------------------------------------

    async def end(self, code: int, reason: str) -> None:
        """Say why, close the socket with `code`, and let go of everything (idempotent)."""
        if self.ending:
            return
        self.ending = True
        dropped = 0 if self.buffer is None else self.buffer.dropped_total
        log.info(
            "live_socket_closed",
            client=self.channel_name,
            code=code,
            reason=reason,
            dropped=dropped,
            lost_upstream=self.lost_upstream(),
        )
        await self.release()
        await self.send(text_data=dumps({"type": "closing", "code": code, "reason": reason}))
        short = reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
        await self.close(code=code, reason=short)

    async def release(self) -> None:
        tasks, self.tasks = self.tasks, []
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)
        if self.buffer is not None:
            await self.buffer.stop()
        if self.guard is not None:
            guard, self.guard = self.guard, None
            await guard.leave()
        # Left to expire by their TTL, unless a socket resumes them (see the docstring).
        await self.let_go(set(self.held))

    async def disconnect(self, code: int) -> None:
        if not self.ending and self.admitted is not None:
            dropped = 0 if self.buffer is None else self.buffer.dropped_total
            log.info(
                "live_socket_left",
                user=self.admitted.caller.username,
                client=self.channel_name,
                held=len(self.held),
                dropped=dropped,
                lost_upstream=self.lost_upstream(),
            )
        self.ending = True
        await self.release()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ending = True
            await self.release()  # also when killed without a disconnect
