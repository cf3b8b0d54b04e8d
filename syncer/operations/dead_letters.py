"""The dead-letter queue's operations: retry, purge and stats.

The admin, `manage.py dlq`, the API and the worker's periodic retry all call these.
They work through the table in bounded batches (keyset pagination on the id), so
20,000 entries cost no more memory than 500.

Retry resubmits each entry's stored payload with its original version:
- OpenSearch accepts it: **succeeded**, the entry is removed;
- a version conflict (a newer version is already indexed): **superseded**, removed;
- any other failure: **failed again**, attempts + 1 and the error updated.
An entry the worker replaced or removed meanwhile (a newer failure or a newer
successful write of the document) is left as the worker left it.
"""

from __future__ import annotations

import argparse
import operator
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import reduce
from typing import Any, TypeVar

import structlog
from asgiref.sync import async_to_sync, sync_to_async
from django.db.models import Count, Max, Min, Q, QuerySet
from django.utils import timezone

from syncer import conf
from syncer.engine.changes import Change, Op
from syncer.engine.interfaces import Sink
from syncer.engine.outcomes import INCOMPLETE_DOCUMENT, ItemResult, Outcome, unwritable
from syncer.errors import RetryAborted, SyncError, TooManyForARequest
from syncer.models import DeadLetter, Subscription
from syncer.operations import subscriptions
from syncer.text import redact
from syncer.wiring import build_sink

log = structlog.get_logger(__name__)
T = TypeVar("T")

RETRY_BATCH = 500
PURGE_BATCH = 2000
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `45s`, `2w` as a timedelta; ValueError says what is accepted."""
    match = _AGE.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"{text!r} is not an age: use a positive number and a unit, e.g. 30m, 12h, 7d, 2w"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def format_age(age: timedelta) -> str:
    """The inverse of `parse_age` for whole units: 7 days -> `7d` (weeks too: `14d`)."""
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def age_argument(text: str) -> timedelta:
    """`parse_age` as an argparse type: a bad value is a usage error (exit 2)."""
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def older_than(entries: QuerySet[DeadLetter], age: timedelta) -> QuerySet[DeadLetter]:
    """The entries whose last failure is at least `age` ago.

    An entry's age counts from its last failure (`last_attempt_at`), not its first: an
    entry that failed again a minute ago is a minute old, whenever it first failed, so a
    purge of old entries never removes one that is still failing.
    """
    return entries.filter(last_attempt_at__lte=timezone.now() - age)


def newer_than(entries: QuerySet[DeadLetter], age: timedelta) -> QuerySet[DeadLetter]:
    """The entries whose last failure is less than `age` ago."""
    return entries.filter(last_attempt_at__gt=timezone.now() - age)


@dataclass(frozen=True)
class Selection:
    """Which entries an operation applies to; the criteria combine with AND."""

    ids: Sequence[int] | None = None
    subscription: str | None = None
    older_than: timedelta | None = None
    """Entries whose last failure is at least this long ago (see `older_than`)."""
    within: QuerySet[DeadLetter] | None = None
    """Start from these entries (the admin's filtered list) rather than all."""

    def queryset(self) -> QuerySet[DeadLetter]:
        entries = DeadLetter.objects.all() if self.within is None else self.within
        if self.ids is not None:
            entries = entries.filter(pk__in=list(self.ids))
        if self.subscription is not None:
            subscriptions.named(self.subscription, known=True)  # else UnknownSubscription
            entries = entries.filter(subscription__name=self.subscription)
        if self.older_than is not None:
            entries = older_than(entries, self.older_than)
        return entries

    def describe(self) -> str:
        """In an operator's words, e.g. `subscription orders, older than 7d`."""
        parts = []
        if self.ids is not None:
            parts.append(f"{len(self.ids)} selected")
        if self.within is not None:
            parts.append("a filtered list")
        if self.subscription is not None:
            parts.append(f"subscription {self.subscription}")
        if self.older_than is not None:
            parts.append(f"older than {format_age(self.older_than)}")
        return ", ".join(parts) or "every subscription"


def entry_fields(entry: DeadLetter) -> dict[str, Any]:
    """A dead letter's fields for listings (the command's and the API's), payload aside."""
    return {
        "id": entry.pk,
        "subscription": entry.subscription.name,
        "doc_id": entry.doc_id,
        "action": entry.action,
        "version": entry.version,
        "attempts": entry.attempts,
        "error_status": entry.error_status,
        "error_type": entry.error_type,
        "error_reason": redact(entry.error_reason),
        "first_failed_at": entry.first_failed_at,
        "last_attempt_at": entry.last_attempt_at,
    }


def _batches(selection: Selection, limit: int | None, size: int) -> Iterator[list[DeadLetter]]:
    """The selected entries in id order, `size` at a time, at most `limit` in all."""
    # defer(None): a caller's list may defer the payload, which retry needs loaded.
    entries = selection.queryset().defer(None).select_related("subscription").order_by("pk")
    after, left = 0, limit
    while left is None or left > 0:
        take = size if left is None else min(size, left)
        batch = list(entries.filter(pk__gt=after)[:take])
        if not batch:
            return
        yield batch
        after = batch[-1].pk
        if left is not None:
            left -= len(batch)


def count(selection: Selection, limit: int | None = None) -> int:
    """How many entries an operation on `selection` would touch (for --dry-run)."""
    total = selection.queryset().count()
    return total if limit is None else min(total, limit)


# -- the bound of one web request ------------------------------------------------------


def within_request_bound(
    operation: str, selection: Selection, selected: int, *, narrow: str
) -> None:
    """Refuse (TooManyForARequest) when `selected` entries are more than one request may
    `operation`: a request runs inside the web process, which it must not stall.
    `narrow` says how the caller can select fewer, in its own terms."""
    most = conf.api_dlq_max()
    if selected <= most:
        return
    raise TooManyForARequest(
        f"{selected} dead letters selected ({selection.describe()}): one request may "
        f"{operation} at most {most} (SYNCER_API_DLQ_MAX), so nothing was done. Narrow the "
        f"selection ({narrow.format(most=most)}), or run {_command_for(operation, selection)}, "
        "which has no such bound."
    )


def _command_for(operation: str, selection: Selection) -> str:
    """The `manage.py dlq` command line that selects the same entries, as far as it can."""
    command = f"manage.py dlq {operation}"
    if selection.subscription is not None:
        command += f" --subscription {selection.subscription}"
    if selection.older_than is not None:
        command += f" --older-than {format_age(selection.older_than)}"
    if selection.ids is not None or selection.within is not None:
        # The command takes no ids or list filters: never suggest a wider operation.
        return f"`{command}` with --subscription and --older-than to match these entries"
    if operation == "purge" and selection.subscription is None and selection.older_than is None:
        command += " --all"
    return f"`{command}`"


# -- retry -----------------------------------------------------------------------------


@dataclass
class RetryReport:
    succeeded: int = 0
    superseded: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Failures again, by error type."""

    @property
    def retried(self) -> int:
        return self.succeeded + self.superseded + self.failed

    def __str__(self) -> str:
        return (
            f"{self.retried} retried: {self.succeeded} succeeded, {self.superseded} "
            f"superseded, {self.failed} failed"
        )


SinkFactory = Callable[[Subscription], Sink]


async def aretry(
    selection: Selection,
    limit: int | None = None,
    *,
    batch_size: int = RETRY_BATCH,
    progress: Callable[[RetryReport], None] | None = None,
    sink_factory: SinkFactory = build_sink,
) -> RetryReport:
    """Resubmit the selected entries; see the module docstring for the outcomes."""
    report = RetryReport()
    batches = _batches(selection, limit, batch_size)
    next_batch = sync_to_async(lambda: next(batches, None), thread_sensitive=True)
    sinks: dict[int, Sink] = {}  # one per subscription for the whole run
    try:
        while (batch := await next_batch()) is not None:
            by_subscription: dict[int, list[DeadLetter]] = {}
            for entry in batch:
                by_subscription.setdefault(entry.subscription_id, []).append(entry)
            for subscription_id, entries in by_subscription.items():
                sink = sinks.get(subscription_id)
                if sink is None:
                    sink = sinks[subscription_id] = sink_factory(entries[0].subscription)
                    await _guarded(sink.open(), report)
                results = await _resubmit(sink, entries, report)
                await sync_to_async(_record, thread_sensitive=True)(entries, results, report)
            if progress is not None:
                progress(report)
    finally:
        for sink in sinks.values():
            await sink.close()
    log.info(
        "dead_letters_retried",
        selection=selection.describe(),
        succeeded=report.succeeded,
        superseded=report.superseded,
        failed=report.failed,
    )
    return report


retry = async_to_sync(aretry)
"""`aretry` for synchronous callers: the admin and `manage.py dlq`."""


async def _guarded(call: Awaitable[T], report: RetryReport) -> T:
    """`call`, with a refusal of OpenSearch as a whole turned into RetryAborted."""
    try:
        return await call
    except SyncError as exc:
        raise RetryAborted(f"retry stopped: {exc} ({report} before it stopped)", report) from exc


async def _resubmit(
    sink: Sink, entries: Sequence[DeadLetter], report: RetryReport
) -> list[ItemResult]:
    """Each entry's result: what OpenSearch says, or why it is not sent at all."""
    refusals = [_refusal(entry) for entry in entries]
    sendable = [_change(e) for e, refusal in zip(entries, refusals, strict=True) if not refusal]
    written = iter(await _guarded(sink.write(sendable), report) if sendable else [])
    return [refusal or next(written) for refusal in refusals]


def _refusal(entry: DeadLetter) -> ItemResult | None:
    """Why an entry cannot be resubmitted as stored (the same rule as the worker's)."""
    if entry.error_type == INCOMPLETE_DOCUMENT:
        # Its payload lacks the values the source did not send: writing it would replace
        # the full document with a part of it.
        return ItemResult(Outcome.PERMANENT, 0, INCOMPLETE_DOCUMENT, entry.error_reason)
    return unwritable(_change(entry))


def _change(entry: DeadLetter) -> Change:
    op = Op.DELETE if entry.action == DeadLetter.Action.DELETE else Op.UPSERT
    return Change(op, entry.doc_id, (entry.doc_id,), entry.version, 0.0, doc=entry.payload)


def _record(
    entries: Sequence[DeadLetter], results: Sequence[ItemResult], report: RetryReport
) -> None:
    now = timezone.now()
    done: list[tuple[int, int]] = []
    for entry, result in zip(entries, results, strict=True):
        if result.outcome is Outcome.OK:
            report.succeeded += 1
            done.append((entry.pk, entry.version))
        elif result.outcome is Outcome.STALE:
            report.superseded += 1
            done.append((entry.pk, entry.version))
        else:
            report.failed += 1
            report.errors[result.error_type] = report.errors.get(result.error_type, 0) + 1
            # Only the entry as retried: the worker may have replaced it meanwhile.
            DeadLetter.objects.filter(pk=entry.pk, version=entry.version).update(
                attempts=entry.attempts + 1,
                error_status=result.status,
                error_type=result.error_type[:200],
                error_reason=result.reason,
                last_attempt_at=now,
            )
    if done:
        # One statement per batch; the version guard keeps entries the worker replaced.
        DeadLetter.objects.filter(
            reduce(operator.or_, (Q(pk=pk, version=version) for pk, version in done))
        ).delete()


# -- purge -----------------------------------------------------------------------------


def purge(
    selection: Selection,
    limit: int | None = None,
    *,
    batch_size: int = PURGE_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the selected entries, `batch_size` at a time; return how many."""
    entries = selection.queryset().order_by("pk")
    removed = 0
    while limit is None or removed < limit:
        take = batch_size if limit is None else min(batch_size, limit - removed)
        ids = list(entries.values_list("pk", flat=True)[:take])
        if not ids:
            break
        removed += DeadLetter.objects.filter(pk__in=ids).delete()[0]
        if progress is not None:
            progress(removed)
    log.info("dead_letters_purged", selection=selection.describe(), removed=removed)
    return removed


# -- stats -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsRow:
    subscription: str
    error_type: str
    count: int
    oldest: datetime
    newest: datetime


@dataclass(frozen=True)
class Stats:
    rows: list[StatsRow]
    total: int
    oldest: DeadLetter | None

    def by_subscription(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for row in self.rows:
            totals[row.subscription] = totals.get(row.subscription, 0) + row.count
        return totals

    def by_error_type(self) -> list[dict[str, Any]]:
        """The rows as the API and `dlq stats --json` show them."""
        return [asdict(row) for row in self.rows]


def stats(selection: Selection | None = None) -> Stats:
    """Counts per subscription and error type, and the oldest entry."""
    entries = (selection or Selection()).queryset()
    grouped = (
        entries.values("subscription__name", "error_type")
        .annotate(n=Count("pk"), oldest=Min("last_attempt_at"), newest=Max("last_attempt_at"))
        .order_by("subscription__name", "-n", "error_type")
    )
    rows = [
        StatsRow(g["subscription__name"], g["error_type"], g["n"], g["oldest"], g["newest"])
        for g in grouped
    ]
    # Oldest as a purge by age sees it: by last failure.
    oldest = entries.select_related("subscription").order_by("last_attempt_at", "pk").first()
    return Stats(rows, sum(r.count for r in rows), oldest)
