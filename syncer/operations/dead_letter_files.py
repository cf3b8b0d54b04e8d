"""Dead letters to and from NDJSON files: `GET /api/dlq/export`, `manage.py dlq export`
and `manage.py dlq import`, to move a queue between environments.

An export is one line per entry, oldest id first, and a summary line last:

    {"subscription": "orders", "doc_id": "42", "action": "index", "version": 100,
     "payload": {...}, "attempts": 3, "error_status": 400, "error_type": "...",
     "error_reason": "...", "first_failed_at": "2026-...+00:00", "last_attempt_at": "..."}
    {"summary": {"dead_letters": 1, "complete": true}}

Entries name their subscription, not its database id, so the file means the same in
another console. The error reason is redacted as everywhere else; the payload is the
document as it would have been written.

An import is all or nothing: one transaction, written `IMPORT_BATCH` entries at a time,
so a file of any size costs one batch of memory. It refuses the whole file when a line
is not an entry (its number and field are named), when an entry's subscription does not
exist here (every such name is listed), or when the summary line is missing, says the
export was incomplete, or counts other entries than the file holds (a file cut short).
A document has at most one dead letter, so an entry whose document already has one
keeps the newer of the two by version: the same entry imported twice is skipped, and a
dead letter never goes back to an older version of its document.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet

from syncer import jsonload
from syncer.errors import DeadLetterFileRefused
from syncer.models import DeadLetter, Subscription, doc_id_digest
from syncer.operations.dead_letters import entry_fields
from syncer.operations.exports import dumps

log = structlog.get_logger(__name__)

EXPORT_BATCH = 500
IMPORT_BATCH = 500
_MAX_BIGINT = 2**63 - 1
_MAX_ATTEMPTS = 2**31 - 1
_LISTED = 20  # unknown subscriptions named in a refusal, at most

REQUIRED = ("subscription", "doc_id", "action", "version", "first_failed_at", "last_attempt_at")
OPTIONAL = ("payload", "attempts", "error_status", "error_type", "error_reason")
FIELDS = frozenset(REQUIRED + OPTIONAL)

# -- export ----------------------------------------------------------------------------


def entry_line(entry: DeadLetter) -> bytes:
    fields = entry_fields(entry)
    del fields["id"]  # this database's own: meaningless in another
    fields["payload"] = entry.payload
    fields["first_failed_at"] = entry.first_failed_at.isoformat()
    fields["last_attempt_at"] = entry.last_attempt_at.isoformat()
    return dumps(fields) + b"\n"


def export_chunks(
    entries: QuerySet[DeadLetter], batch_size: int = EXPORT_BATCH
) -> Generator[bytes, None, None]:
    """The entries as NDJSON, a batch of lines per chunk (keyset pages on the id), then
    the summary line; a database failure midway ends it with `complete: false`."""
    pages = entries.defer(None).select_related("subscription").order_by("pk")
    exported, after = 0, 0
    try:
        while batch := list(pages.filter(pk__gt=after)[:batch_size]):
            yield b"".join(entry_line(entry) for entry in batch)
            exported += len(batch)
            after = batch[-1].pk
    except DatabaseError as exc:
        log.warning("dead_letter_export_failed", exported=exported, error=str(exc))
        error = f"the console's database failed after {exported} dead letters: {exc}"
        summary = {"dead_letters": exported, "complete": False, "error": error}
        yield dumps({"summary": summary}) + b"\n"
        return
    log.info("dead_letters_exported", exported=exported)
    yield dumps({"summary": {"dead_letters": exported, "complete": True}}) + b"\n"


async def aexport_chunks(
    entries: QuerySet[DeadLetter], batch_size: int = EXPORT_BATCH
) -> AsyncIterator[bytes]:
    """`export_chunks` for an ASGI response: each batch is read in Django's sync thread."""
    chunks = export_chunks(entries, batch_size)
    next_chunk = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
    try:
        while (chunk := await next_chunk()) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()


# -- import ----------------------------------------------------------------------------


@dataclass
class ImportReport:
    added: int = 0
    """Entries of documents that had none."""
    replaced: int = 0
    """Entries newer (by version) than the one their document had, which they replaced."""
    skipped: int = 0
    """Entries whose document already has this version or a newer one (in the queue or
    further up the file): the same entry imported twice is skipped."""
    by_subscription: dict[str, int] = field(default_factory=dict)
    """Entries added or replacing, per subscription."""

    @property
    def imported(self) -> int:
        return self.added + self.replaced

    def __str__(self) -> str:
        plural = "s" if self.imported != 1 else ""
        text = f"imported {self.imported} dead letter{plural} ({self.added} new, "
        text += f"{self.replaced} replacing older ones), skipped {self.skipped} already there"
        if self.by_subscription:
            text += ": " + ", ".join(f"{n} {c}" for n, c in sorted(self.by_subscription.items()))
        return text


@dataclass(frozen=True, slots=True)
class _Entry:
    line: int
    subscription: str
    doc_id: str
    action: str
    version: int
    payload: bytes | None
    attempts: int
    error_status: int | None
    error_type: str
    error_reason: str
    first_failed_at: datetime
    last_attempt_at: datetime


def import_lines(
    lines: Iterable[bytes | str], *, batch_size: int = IMPORT_BATCH, dry_run: bool = False
) -> ImportReport:
    """Import an export's lines, all or nothing (see the module docstring); a refusal is a
    DeadLetterFileRefused naming the line. `dry_run` counts, then rolls everything back."""
    report = ImportReport()
    with transaction.atomic():
        _Import(report, batch_size).run(lines)
        if dry_run:
            transaction.set_rollback(True)
    log.info(
        "dead_letters_imported",
        added=report.added,
        replaced=report.replaced,
        skipped=report.skipped,
        dry_run=dry_run,
    )
    return report


class _Import:
    def __init__(self, report: ImportReport, batch_size: int) -> None:
        self.report = report
        self.batch_size = batch_size
        self.known: dict[str, int] = {}
        self.unknown: dict[str, int] = {}  # name -> first line
        self.entries = 0

    def run(self, lines: Iterable[bytes | str]) -> None:
        batch: list[_Entry] = []
        summary: tuple[int, dict[str, Any]] | None = None
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            value = _parse(raw, number)
            if summary is not None:
                raise DeadLetterFileRefused(
                    f"line {number}: comes after the summary line (line {summary[0]}), "
                    "which must be the file's last",
                    number,
                )
            if isinstance(value, dict) and "summary" in value:
                summary = (number, _summary(value, number))
                continue
            batch.append(_entry(value, number))
            self.entries += 1
            if len(batch) >= self.batch_size:
                self.write(batch)
                batch = []
        self.write(batch)
        self.check_subscriptions()
        self.check_summary(summary)

    def write(self, batch: list[_Entry]) -> None:
        first_lines: dict[str, int] = {}
        for entry in batch:
            first_lines.setdefault(entry.subscription, entry.line)
        self.resolve(first_lines)
        if self.unknown or not batch:
            return  # the file will be refused: only validate the rest of it
        # One row per document per statement (ON CONFLICT may touch a row once): the
        # newest version of each; the others are skipped as the database would skip them.
        newest: dict[tuple[int, str], _Entry] = {}
        for entry in batch:
            key = (self.known[entry.subscription], doc_id_digest(entry.doc_id))
            kept = newest.get(key)
            if kept is None or entry.version > kept.version:
                newest[key] = entry
        self.report.skipped += len(batch) - len(newest)
        rows = [(self.known[e.subscription], e) for e in newest.values()]
        with connection.cursor() as cursor:
            cursor.execute(
                _IMPORT_SQL.format(table=connection.ops.quote_name(DeadLetter._meta.db_table)),
                [
                    [sub_id for sub_id, _ in rows],
                    [e.doc_id for _, e in rows],
                    [doc_id_digest(e.doc_id) for _, e in rows],
                    [e.action for _, e in rows],
                    [None if e.payload is None else e.payload.decode() for _, e in rows],
                    [e.version for _, e in rows],
                    [e.attempts for _, e in rows],
                    [e.error_status for _, e in rows],
                    [e.error_type for _, e in rows],
                    [e.error_reason for _, e in rows],
                    [e.first_failed_at for _, e in rows],
                    [e.last_attempt_at for _, e in rows],
                ],
            )
            written = cursor.fetchall()
        names = {sub_id: name for name, sub_id in self.known.items()}
        for sub_id, inserted in written:
            if inserted:
                self.report.added += 1
            else:
                self.report.replaced += 1
            name = names[sub_id]
            self.report.by_subscription[name] = self.report.by_subscription.get(name, 0) + 1
        self.report.skipped += len(rows) - len(written)

    def resolve(self, first_lines: dict[str, int]) -> None:
        """Learn the ids of the batch's subscriptions; note those that do not exist."""
        missing = [name for name in first_lines if name not in self.known]
        if not missing:
            return
        found = dict(Subscription.objects.filter(name__in=missing).values_list("name", "pk"))
        self.known.update(found)
        for name in missing:
            if name not in found:
                self.unknown.setdefault(name, first_lines[name])

    def check_subscriptions(self) -> None:
        if not self.unknown:
            return
        listed = sorted(self.unknown.items(), key=lambda item: item[1])
        names = ", ".join(f"{name!r} (first on line {line})" for name, line in listed[:_LISTED])
        if len(listed) > _LISTED:
            names += f" and {len(listed) - _LISTED} more"
        raise DeadLetterFileRefused(
            f"no subscription named {names} in this console: create "
            f"{'them' if len(listed) > 1 else 'it'} first (manage.py subscriptions apply), or "
            "remove their entries from the file; nothing was imported"
        )

    def check_summary(self, summary: tuple[int, dict[str, Any]] | None) -> None:
        if summary is None:
            raise DeadLetterFileRefused(
                f'the file has no summary line ({{"summary": {{...}}}}) after its {self.entries} '
                "entries: it was cut short, or not written by `dlq export`; nothing was imported"
            )
        number, fields = summary
        if not fields["complete"]:
            reason = fields.get("error") or "no reason given"
            raise DeadLetterFileRefused(
                f"line {number}: the export was incomplete ({reason}): export again; "
                "nothing was imported",
                number,
            )
        if fields["dead_letters"] != self.entries:
            raise DeadLetterFileRefused(
                f"line {number}: the summary counts {fields['dead_letters']} dead letters but "
                f"the file holds {self.entries}: it was cut or edited; nothing was imported",
                number,
            )


_IMPORT_SQL = """
INSERT INTO {table} AS d (subscription_id, doc_id, doc_id_digest, action, payload, version,
                          attempts, error_status, error_type, error_reason, first_failed_at,
                          last_attempt_at)
SELECT s, i, g, a, p::jsonb, v, n, e, t, r, f, l
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[],
            %s::integer[], %s::integer[], %s::text[], %s::text[], %s::timestamptz[],
            %s::timestamptz[]) AS w(s, i, g, a, p, v, n, e, t, r, f, l)
ON CONFLICT ON CONSTRAINT deadletter_one_per_document DO UPDATE SET
    action = EXCLUDED.action, payload = EXCLUDED.payload, version = EXCLUDED.version,
    attempts = EXCLUDED.attempts, error_status = EXCLUDED.error_status,
    error_type = EXCLUDED.error_type, error_reason = EXCLUDED.error_reason,
    first_failed_at = LEAST(d.first_failed_at, EXCLUDED.first_failed_at),
    last_attempt_at = EXCLUDED.last_attempt_at
WHERE d.version < EXCLUDED.version
RETURNING d.subscription_id, (xmax = 0)
"""
"""Insert each entry, or replace an older version of its document's; RETURNING names
the rows written, `xmax = 0` those inserted (PostgreSQL's documented idiom)."""


# -- one line --------------------------------------------------------------------------


def _parse(raw: bytes | str, number: int) -> Any:
    try:
        return jsonload.loads(raw)
    except (ValueError, TypeError) as exc:
        raise DeadLetterFileRefused(f"line {number}: not JSON ({exc})", number) from None


def _refused(number: int, name: str, problem: str) -> DeadLetterFileRefused:
    return DeadLetterFileRefused(f"line {number}, field {name!r}: {problem}", number)


def _summary(value: dict[str, Any], number: int) -> dict[str, Any]:
    fields = value["summary"]
    if len(value) != 1 or not isinstance(fields, dict):
        raise DeadLetterFileRefused(
            f'line {number}: a summary line is {{"summary": {{"dead_letters": N, '
            '"complete": true}}, alone on its line',
            number,
        )
    count = fields.get("dead_letters")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise _refused(number, "summary.dead_letters", "must be the number of entries")
    if not isinstance(fields.get("complete"), bool):
        raise _refused(number, "summary.complete", "must be true or false")
    return fields


def _entry(value: Any, number: int) -> _Entry:
    if not isinstance(value, dict):
        raise DeadLetterFileRefused(
            f"line {number}: not a dead letter (a JSON object with the fields "
            f"{', '.join(REQUIRED)})",
            number,
        )
    unknown = sorted(set(value) - FIELDS)
    if unknown:
        raise _refused(
            number, unknown[0], f"not a dead letter's field (they are: {', '.join(sorted(FIELDS))})"
        )
    for name in REQUIRED:
        if name not in value:
            raise _refused(number, name, "missing")
    action = value["action"]
    if action not in DeadLetter.Action.values:
        raise _refused(number, "action", f"{action!r} is neither 'index' nor 'delete'")
    payload = value.get("payload")
    if action == DeadLetter.Action.INDEX and not isinstance(payload, dict):
        raise _refused(number, "payload", "an index entry's payload must be a JSON object")
    if payload is not None and not isinstance(payload, dict):
        raise _refused(number, "payload", "must be a JSON object or null")
    encoded = None if payload is None else dumps(payload)
    if encoded is not None and b"\\u0000" in encoded:
        raise _refused(number, "payload", "holds a NUL character (\\u0000), which jsonb cannot")
    status = value.get("error_status")
    if status is not None and not (_is_int(status) and 100 <= status <= 599):
        raise _refused(number, "error_status", f"{status!r} is not an HTTP status or null")
    return _Entry(
        line=number,
        subscription=_text(value, "subscription", number, required=True),
        doc_id=_text(value, "doc_id", number, required=True),
        action=action,
        version=_number(value, "version", number, 0, _MAX_BIGINT),
        payload=encoded,
        attempts=_number(value, "attempts", number, 1, _MAX_ATTEMPTS, default=1),
        error_status=status,
        error_type=_text(value, "error_type", number, limit=200),
        error_reason=_text(value, "error_reason", number),
        first_failed_at=_time(value, "first_failed_at", number),
        last_attempt_at=_time(value, "last_attempt_at", number),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(
    value: dict[str, Any], name: str, number: int, *, required: bool = False, limit: int = 0
) -> str:
    text = value.get(name, "")
    if not isinstance(text, str):
        raise _refused(number, name, f"must be text, not {type(text).__name__}")
    if required and not text:
        raise _refused(number, name, "is empty")
    if "\x00" in text:
        raise _refused(number, name, "holds a NUL character (\\u0000)")
    if limit and len(text) > limit:
        raise _refused(number, name, f"is longer than {limit} characters")
    return text


def _number(
    value: dict[str, Any], name: str, number: int, low: int, high: int, default: int = 0
) -> int:
    found = value.get(name, default)
    if not _is_int(found) or not low <= found <= high:
        raise _refused(number, name, f"{found!r} is not a whole number from {low} to {high}")
    return int(found)


def _time(value: dict[str, Any], name: str, number: int) -> datetime:
    text = value[name]
    try:
        when = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        example = "2026-01-31T12:00:00+00:00"
        raise _refused(number, name, f"{text!r} is not an ISO 8601 time with offset ({example})")
    return when
