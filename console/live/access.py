"""Who may hold a live stream, asked again while it is open.

A websocket or an event stream outlives the request that opened it: a revoked token, a
logout, a lost staff flag or view permission, or a deactivated user must end it too.
`StreamCaller` remembers how the stream was let in (a session key or a token id) and
`recheck` asks again from the database, as a new request would be asked; `StreamGuard`
does it every `LIVE_STREAM_RECHECK_SECONDS` and holds the stream's slot among its
user's `LIVE_STREAMS_PER_USER` (console.live.slots).

Websocket close codes (the event stream sends the same code in a last `closed` event):
4401 not logged in, logged out, token revoked, user deactivated; 4403 not staff or no
permission to view subscriptions; 4404 no such subscription; 4429 too many live streams
open for this user.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from typing import Any

import structlog
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser, User
from django.db import DatabaseError
from redis.exceptions import RedisError

from console.live import slots
from console.model_permissions import VIEW_SUBSCRIPTION
from console.models import ApiToken
from syncer.text import redact

log = structlog.get_logger(__name__)

NOT_AUTHENTICATED = 4401
NOT_ALLOWED = 4403
NO_SUCH_SUBSCRIPTION = 4404
TOO_MANY_STREAMS = 4429

DEFAULT_RECHECK_SECONDS = 10.0


def recheck_interval() -> float:
    """Seconds between re-checks of a stream's caller (`LIVE_STREAM_RECHECK_SECONDS`)."""
    return float(getattr(settings, "LIVE_STREAM_RECHECK_SECONDS", DEFAULT_RECHECK_SECONDS))


@dataclass(frozen=True)
class Refusal:
    """Why a caller may not (or no longer) hold a stream, and the close code that says so."""

    code: int
    reason: str


@dataclass(frozen=True)
class StreamCaller:
    """How a stream's caller was let in: its user, and its session or API token."""

    user_id: int
    username: str
    session_key: str | None = None
    token_id: int | None = None


def refusal_of(user: User | AnonymousUser | None) -> Refusal | None:
    """Why `user` may not watch the live monitor, or None when it may (reads the database)."""
    if user is None or not user.is_authenticated:
        return Refusal(NOT_AUTHENTICATED, "not logged in, or logged out: log in again")
    if not user.is_active:
        return Refusal(NOT_AUTHENTICATED, "this user has been deactivated")
    if not getattr(user, "is_staff", False):
        return Refusal(NOT_ALLOWED, "the live monitor is for staff users; this user is not")
    if not user.has_perm(VIEW_SUBSCRIPTION):
        return Refusal(NOT_ALLOWED, f"this user lacks the permission {VIEW_SUBSCRIPTION} it needs")
    return None


def _session_user(session_key: str) -> Any:
    """The user of the session now, as a new request would find it (anonymous once logged
    out, after a password change, or deactivated)."""
    engine = import_module(settings.SESSION_ENGINE)
    return get_user(SimpleNamespace(session=engine.SessionStore(session_key)))  # type: ignore[arg-type]


def _recheck(caller: StreamCaller) -> Refusal | None:
    if caller.token_id is not None:
        token = ApiToken.objects.select_related("user").filter(pk=caller.token_id).first()
        if token is None or token.revoked_at is not None:
            return Refusal(NOT_AUTHENTICATED, "this API token has been revoked")
        return refusal_of(token.user)
    if caller.session_key is None:
        return Refusal(NOT_AUTHENTICATED, "no session")
    user = _session_user(caller.session_key)
    if user.is_authenticated and user.pk != caller.user_id:
        return Refusal(NOT_AUTHENTICATED, "the session now belongs to another user")
    return refusal_of(user)


async def recheck(caller: StreamCaller) -> Refusal | None:
    """Why `caller` may no longer hold its stream, or None (reads the database)."""
    found: Refusal | None = await database_sync_to_async(_recheck)(caller)
    return found


class StreamGuard:
    """One open stream's caller: its slot among the user's streams, re-checked periodically."""

    def __init__(self, caller: StreamCaller, client_id: str) -> None:
        self.caller = caller
        self.client_id = client_id
        self._holding = False

    async def enter(self) -> Refusal | None:
        """Take a slot for the stream; a Refusal (4429) when the user holds too many."""
        limit = slots.per_user()
        if not await slots.take(self.caller.user_id, self.client_id, self._slot_ttl()):
            log.info(
                "live_stream_refused", user=self.caller.username, reason="too many", limit=limit
            )
            return Refusal(
                TOO_MANY_STREAMS,
                f"user {self.caller.username!r} already holds {limit} live streams, the "
                f"limit (LIVE_STREAMS_PER_USER): close one and try again",
            )
        self._holding = True
        return None

    async def watch(self) -> Refusal:
        """Wait until the caller may no longer hold the stream; say why."""
        while True:
            await asyncio.sleep(recheck_interval())
            try:
                refusal = await recheck(self.caller)
                if refusal is None:
                    await slots.refresh(self.caller.user_id, self.client_id, self._slot_ttl())
            except (DatabaseError, RedisError, OSError) as exc:
                # Nothing can be revoked while the database is down: ask again next time.
                log.warning(
                    "live_stream_recheck_failed", client=self.client_id, error=redact(str(exc))
                )
                continue
            if refusal is not None:
                log.info(
                    "live_stream_ended",
                    user=self.caller.username,
                    client=self.client_id,
                    code=refusal.code,
                    reason=refusal.reason,
                )
                return refusal

    async def leave(self) -> None:
        """Give the slot back (idempotent)."""
        if self._holding:
            self._holding = False
            await slots.give_back(self.caller.user_id, self.client_id)

    def _slot_ttl(self) -> float:
        # A slot not refreshed for three re-checks belongs to a process that died.
        return max(3 * recheck_interval(), 5.0)
