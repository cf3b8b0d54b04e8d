"""`/api/dlq`: list, read, count, retry and purge dead letters through
`syncer.operations.dead_letters`.

The list is newest first with a cursor (the last entry's first_failed_at and id), so
paging stays stable while the worker adds entries: new ones sort before the first page.
`/api/dlq/export` streams the entries the list's filters select as NDJSON
(`syncer.operations.dead_letter_files`), for `manage.py dlq import` elsewhere.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.db.models import Q, QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from ninja import Field, Query, Router, Schema

from console.api import cursors
from console.api.errors import FieldErrors, NotFound
from console.api.permissions import (
    CHANGE_DEAD_LETTER,
    DELETE_DEAD_LETTER,
    VIEW_DEAD_LETTER,
    requires,
)
from console.api.schemas import (
    DeadLetterOut,
    DeadLetterPage,
    PurgeIn,
    PurgeOut,
    RetryIn,
    RetryOut,
    StatsOut,
    dead_letter_out,
    retry_outcome,
)
from syncer.errors import TooManyForARequest
from syncer.models import DeadLetter
from syncer.operations import dead_letter_files, dead_letters
from syncer.operations.exports import NDJSON

router = Router(tags=["dead letters"])

DEFAULT_PAGE = 50
MAX_PAGE = 500


class Filters(Schema):
    subscription: str | None = Field(None, description="Only this subscription's entries.")
    action: DeadLetter.Action | None = Field(None, description="index or delete.")
    error_type: str | None = Field(None, description="e.g. mapper_parsing_exception.")
    older_than: str | None = Field(None, description="Last failed at least this long ago: 7d.")
    newer_than: str | None = Field(None, description="Last failed less than this long ago: 1h.")


class ListFilters(Filters):
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)


def _age(field: str, text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        age = dead_letters.parse_age(text)
        timezone.now() - age  # an age reaching before year 1 cannot be used
    except ValueError as exc:
        raise FieldErrors([(field, str(exc))]) from None
    except OverflowError:
        raise FieldErrors([(field, f"{text!r} is too long ago; use a smaller age")]) from None
    return age


def _encode_cursor(entry: DeadLetter) -> str:
    return cursors.encode(entry.first_failed_at, entry.pk)


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    return cursors.decode(cursor, int)


def _selected(filters: Filters) -> QuerySet[DeadLetter]:
    older_than = _age("older_than", filters.older_than)
    newer_than = _age("newer_than", filters.newer_than)
    _check_text("subscription", filters.subscription)
    entries = dead_letters.Selection(
        subscription=filters.subscription, older_than=older_than
    ).queryset()
    if filters.action is not None:
        entries = entries.filter(action=filters.action)
    if filters.error_type is not None:
        _check_text("error_type", filters.error_type)
        entries = entries.filter(error_type=filters.error_type)
    if newer_than is not None:
        entries = dead_letters.newer_than(entries, newer_than)
    return entries


def _check_text(field: str, value: str | None) -> None:
    if value is not None and "\x00" in value:  # PostgreSQL cannot even be asked
        raise FieldErrors([(field, "contains a NUL character (\\x00); remove it")])


@router.get("", response=DeadLetterPage, summary="List dead letters")
@requires(VIEW_DEAD_LETTER)
def list_dead_letters(request: HttpRequest, filters: Query[ListFilters]) -> dict[str, Any]:
    """Newest first, `limit` at a time; filters combine with AND."""
    entries = _selected(filters)
    if filters.cursor is not None:
        when, pk = _decode_cursor(filters.cursor)
        entries = entries.filter(Q(first_failed_at__lt=when) | Q(first_failed_at=when, pk__lt=pk))
    page = list(
        entries.select_related("subscription")
        .defer("payload")
        .order_by("-first_failed_at", "-pk")[: filters.limit + 1]
    )
    more = len(page) > filters.limit
    page = page[: filters.limit]
    return {
        "items": [dead_letter_out(entry) for entry in page],
        "next_cursor": _encode_cursor(page[-1]) if more else None,
    }


@router.get("/stats", response=StatsOut, summary="Count dead letters")
@requires(VIEW_DEAD_LETTER)
def dead_letter_stats(
    request: HttpRequest,
    subscription: Query[str | None] = None,
    older_than: Query[str | None] = None,
) -> dict[str, Any]:
    """Counts per subscription and error type, and the oldest entry."""
    _check_text("subscription", subscription)
    stats = dead_letters.stats(
        dead_letters.Selection(subscription=subscription, older_than=_age("older_than", older_than))
    )
    return {
        "total": stats.total,
        "by_subscription": stats.by_subscription(),
        "by_error_type": stats.by_error_type(),
        "oldest": None if stats.oldest is None else dead_letter_out(stats.oldest),
    }


_EXPORT_DOC = {
    "responses": {
        200: {
            "description": "One dead letter per line, oldest first, then a summary line: "
            '{"summary": {"dead_letters": N, "complete": true}}. A stream whose last line '
            "is not a complete summary was cut short.",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        }
    }
}


@router.get("/export", summary="Export dead letters as NDJSON", openapi_extra=_EXPORT_DOC)
@requires(VIEW_DEAD_LETTER)
def export_dead_letters(request: HttpRequest, filters: Query[Filters]) -> StreamingHttpResponse:
    """The entries the list's filters select, every one, for `manage.py dlq import`."""
    entries = _selected(filters)  # a bad filter is refused here, before the stream begins
    # Under ASGI (daphne) the batches are read in Django's sync thread as the client reads.
    chunks = (
        dead_letter_files.aexport_chunks(entries)
        if isinstance(request, ASGIRequest)
        else dead_letter_files.export_chunks(entries)
    )
    response = StreamingHttpResponse(chunks, content_type=NDJSON)
    response["Content-Disposition"] = 'attachment; filename="dead-letters.ndjson"'
    response["Cache-Control"] = "no-store"
    return response


@router.get("/{int:entry_id}", response=DeadLetterOut, summary="Read a dead letter")
@requires(VIEW_DEAD_LETTER)
def get_dead_letter(request: HttpRequest, entry_id: int) -> dict[str, Any]:
    entry = DeadLetter.objects.select_related("subscription").filter(pk=entry_id).first()
    if entry is None:
        raise NotFound(f"no dead letter with id {entry_id}")
    return dead_letter_out(entry, payload=True)


def _selection(body: RetryIn | PurgeIn) -> dead_letters.Selection:
    _check_text("subscription", body.subscription)
    selection = dead_letters.Selection(
        ids=body.ids, subscription=body.subscription, older_than=_age("older_than", body.older_than)
    )
    selection.queryset()  # an unknown subscription is a 404 before anything is done
    return selection


_NARROW = "a subscription, an age, fewer ids, or a limit of at most {most} per call"


def _bounded(
    operation: str, selection: dead_letters.Selection, body: RetryIn | PurgeIn
) -> tuple[int, int]:
    """(selected, remaining): entries this call touches (up to `limit`) and those beyond.

    A call that would touch more than SYNCER_API_DLQ_MAX entries is refused whole (422 on
    `limit`), so one request cannot stall the web process; a dry run only counts.
    """
    matched = dead_letters.count(selection)
    selected = matched if body.limit is None else min(matched, body.limit)
    if not body.dry_run:
        try:
            dead_letters.within_request_bound(operation, selection, selected, narrow=_NARROW)
        except TooManyForARequest as exc:
            raise FieldErrors([("limit", str(exc))]) from None
    return selected, matched - selected


@router.post("/retry", response=RetryOut, summary="Retry dead letters")
@requires(CHANGE_DEAD_LETTER)
def retry_dead_letters(request: HttpRequest, payload: RetryIn) -> dict[str, Any]:
    """Resubmit the entries with their original versions; counts as the admin gives them.

    At most SYNCER_API_DLQ_MAX (1000) entries per call: a larger selection is refused
    with 422 unless `limit` bounds it; `remaining` says how many a next call would find.
    """
    selection = _selection(payload)
    selected, remaining = _bounded("retry", selection, payload)
    if payload.dry_run:
        return {
            "dry_run": True,
            "selected": selected,
            "remaining": remaining,
            **retry_outcome(dead_letters.RetryReport()),
            "message": f"would retry {selected} ({selection.describe()}); nothing was sent",
        }
    report = dead_letters.retry(selection, payload.limit)
    return {
        "dry_run": False,
        "selected": selected,
        "remaining": remaining,
        **retry_outcome(report),
    }


@router.post("/purge", response=PurgeOut, summary="Purge dead letters")
@requires(DELETE_DEAD_LETTER)
def purge_dead_letters(request: HttpRequest, payload: PurgeIn) -> dict[str, Any]:
    """Delete the entries; without ids, subscription or age, `all: true` is required.

    At most SYNCER_API_DLQ_MAX (1000) entries per call, as for retry.
    """
    if payload.ids is None and not (payload.subscription or payload.older_than or payload.all):
        raise FieldErrors(
            [
                (
                    "all",
                    "say which entries: ids, subscription, older_than, or all: true for every one",
                )
            ]
        )
    selection = _selection(payload)
    selected, remaining = _bounded("purge", selection, payload)
    if payload.dry_run:
        message = f"would purge {selected} ({selection.describe()}); nothing was deleted"
        return {
            "dry_run": True,
            "selected": selected,
            "remaining": remaining,
            "purged": 0,
            "message": message,
        }
    purged = dead_letters.purge(selection, payload.limit)
    plural = "s" if purged != 1 else ""
    return {
        "dry_run": False,
        "selected": selected,
        "remaining": remaining,
        "purged": purged,
        "message": f"purged {purged} dead letter{plural}",
    }
