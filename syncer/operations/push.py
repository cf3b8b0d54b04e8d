"""Posting NDJSON to a push subscription: every line checked alone, accepted lines queued.

`refuse_unless_pushable` and `check_room` run before the answer starts (a 409 or a 429
is a status, not a line); `statuses` then reads the body a chunk at a time and answers
one line per input line, in input order, and a summary:

    {"line": 1, "status": "accepted", "position": 1764773654123457}
    {"line": 2, "status": "rejected", "error": "\\"op\\" must be \\"upsert\\" or ..."}
    {"line": 9, "status": "stopped", "reason": "queue_full", "error": "..."}
    {"status": "summary", "accepted": 7, "rejected": 1, "stopped_at": 9,
     "first_position": 1764773654123457, "last_position": 1764773654123463}

Accepted means committed: the lines of a group (SYNCER_PUSH_COMMIT_LINES at most) are
committed in one transaction before any of their status lines is sent. A line refused
(malformed, too long) is refused alone; the request stops only when the body passes
SYNCER_PUSH_MAX_REQUEST_BYTES, the queue reaches SYNCER_PUSH_QUEUE_LIMIT, or the console
database fails, each said in a `stopped` line naming the first line not accepted (every
line before it was answered). Blank lines are skipped: no status, but they are counted
in the line numbers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from asgiref.sync import sync_to_async
from django.db.models import Min

from syncer import conf, dsn
from syncer.conf import PushSettings
from syncer.errors import ConsoleDatabaseUnavailable, NotPushable, PushQueueFull
from syncer.models import PushedChange, PushSequence, Subscription
from syncer.sources.push import lines
from syncer.sources.push.lines import Operation, Overflow, TooLong
from syncer.sources.push.queue import QueueWriter

log = structlog.get_logger(__name__)

CONTENT_TYPE = "application/x-ndjson"


def refuse_unless_pushable(subscription: Subscription) -> None:
    """Raise NotPushable unless the subscription's changes are posted to the API."""
    kind = subscription.kind
    if kind.reads_database:
        raise NotPushable(
            f"subscription {subscription.name} reads its changes from {kind.label} "
            f"({subscription.relation}); only subscriptions of source kind push take "
            "posted documents: create one with source: {kind: push}"
        )


def queued(subscription: Subscription) -> int:
    """Operations accepted for `subscription` and not yet removed from its queue."""
    return queued_by_name([subscription.name]).get(subscription.name, 0)


def queued_by_name(names: Collection[str]) -> dict[str, int]:
    """Operations accepted and not yet removed, for each push subscription among
    `names`: its sequence's last position less its queue's lowest, in two grouped
    queries (0 for an empty queue)."""
    last = dict(
        PushSequence.objects.filter(subscription__name__in=names).values_list(
            "subscription__name", "last_position"
        )
    )
    lowest = dict(
        PushedChange.objects.filter(subscription__name__in=names)
        .values("subscription__name")
        .annotate(low=Min("position"))
        .values_list("subscription__name", "low")
    )
    return {
        name: int(position - lowest[name] + 1) if name in lowest else 0
        for name, position in last.items()
    }


async def check_room(subscription: Subscription, settings: PushSettings | None = None) -> None:
    """Raise PushQueueFull when the queue is at its limit: the client should back off."""
    limit = (settings or conf.push()).queue_limit
    waiting = await sync_to_async(queued)(subscription)
    if waiting >= limit:
        log.info("push_refused_queue_full", subscription=subscription.name, queued=waiting)
        raise PushQueueFull(subscription.name, waiting, limit)


@dataclass
class _Tally:
    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    stopped_at: int | None = None
    first: int | None = None
    last: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "status": "summary",
            "accepted": self.accepted,
            "rejected": self.rejected,
            "stopped_at": self.stopped_at,
            "first_position": self.first,
            "last_position": self.last,
        }


@dataclass
class _Group:
    """Lines read and not yet answered: operations to commit and refusals between them."""

    items: list[tuple[int, Operation | str]] = field(default_factory=list)
    operations: int = 0

    def add(self, number: int, item: Operation | str) -> None:
        self.items.append((number, item))
        if isinstance(item, Operation):
            self.operations += 1


def _line(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body) + b"\n"


def _rejected(number: int, reason: str) -> dict[str, Any]:
    return {"line": number, "status": "rejected", "error": reason}


def _stopped(number: int, reason: str, error: str) -> dict[str, Any]:
    return {"line": number, "status": "stopped", "reason": reason, "error": error}


async def statuses(
    subscription: Subscription,
    read: Callable[[int], bytes],
    settings: PushSettings | None = None,
    conninfo: str | None = None,
) -> AsyncGenerator[bytes, None]:
    """Queue the operations of the body `read` gives; yield the status lines, a group's
    only once it is committed."""
    settings = settings or conf.push()
    tally = _Tally()
    name = subscription.name
    try:
        async with QueueWriter.opened(
            conninfo or dsn.console_conninfo(), subscription.pk, settings.queue_limit
        ) as writer:
            group = _Group()
            for item in lines.split(read, settings.max_line_bytes, settings.max_request_bytes):
                if isinstance(item, Overflow):
                    answered, stop = await _commit(writer, group, tally, name)
                    yield answered
                    if stop is None:
                        stop = _stopped(
                            item.number,
                            "request_too_large",
                            f"the request passed {settings.max_request_bytes:,} bytes "
                            f"(SYNCER_PUSH_MAX_REQUEST_BYTES) in line {item.number}: it and "
                            "the lines after it were not read; send them in another request",
                        )
                    yield _finish(tally, stop, name)
                    return
                tally.lines = item.number
                if isinstance(item, TooLong):
                    group.add(
                        item.number,
                        f"the line is {item.size:,} bytes, more than {settings.max_line_bytes:,} "
                        "(SYNCER_PUSH_MAX_LINE_BYTES); make the document smaller",
                    )
                elif item.text.strip():
                    group.add(item.number, lines.parse(item.text))
                if group.operations >= settings.commit_lines or len(group.items) >= 1000:
                    answered, stop = await _commit(writer, group, tally, name)
                    yield answered
                    if stop is not None:
                        yield _finish(tally, stop, name)
                        return
                    group = _Group()
            answered, stop = await _commit(writer, group, tally, name)
            yield answered
            yield _finish(tally, stop, name)
    except ConsoleDatabaseUnavailable as exc:
        # Before the writer opened, or while a group committed: nothing of it is accepted.
        number = tally.lines if tally.stopped_at is None else tally.stopped_at
        log.warning("push_stopped", subscription=name, error=str(exc))
        stop = _stopped(
            _first_unanswered(tally, number),
            "unavailable",
            f"{exc}; this line and the ones after it were not accepted: send them again",
        )
        yield _finish(tally, stop, name)


def _first_unanswered(tally: _Tally, fallback: int) -> int:
    return tally.stopped_at if tally.stopped_at is not None else max(1, fallback)


async def _commit(
    writer: QueueWriter, group: _Group, tally: _Tally, name: str
) -> tuple[bytes, dict[str, Any] | None]:
    """Commit the group's operations; its status lines, and a stop if not all fit."""
    operations = [item for _, item in group.items if isinstance(item, Operation)]
    if group.items:
        tally.stopped_at = group.items[0][0]  # until the commit says otherwise
    appended = None
    if operations:
        appended = await writer.append(operations)
    tally.stopped_at = None
    out = bytearray()
    taken = appended.taken if appended is not None else 0
    position = appended.first if appended is not None else 0
    used = 0
    for number, item in group.items:
        if isinstance(item, str):
            out += _line(_rejected(number, item))
            tally.rejected += 1
            continue
        if used == taken:
            assert appended is not None
            error = str(PushQueueFull(name, appended.queued, writer.limit))
            error += f": line {number} and the ones after it were not accepted"
            return bytes(out), _stopped(number, "queue_full", error)
        out += _line({"line": number, "status": "accepted", "position": position})
        tally.first = position if tally.first is None else tally.first
        tally.last = position
        tally.accepted += 1
        position += 1
        used += 1
    return bytes(out), None


def _finish(tally: _Tally, stop: dict[str, Any] | None, name: str) -> bytes:
    out = b""
    if stop is not None:
        tally.stopped_at = int(stop["line"])
        out = _line(stop)
    log.info(
        "push_received",
        subscription=name,
        lines=tally.lines,
        accepted=tally.accepted,
        rejected=tally.rejected,
        stopped_at=tally.stopped_at,
    )
    return out + _line(tally.summary())
