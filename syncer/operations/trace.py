"""Trace one document end to end: its source row now, the document as indexed, its dead
letter, and whether row and document agree.

`trace(subscription, key)` is what `manage.py trace`, `GET /api/subscriptions/{name}/
trace/{key}` and the admin's "Trace a document" page show. The key is the document id
as the monitor and the dead letters show it (`syncer.sources.lookup`): one column's
value, or a composite key's values joined by `|` (`\\` and `|` inside a value escaped
as `\\\\` and `\\|`); anything else is refused with InvalidKey, naming the key columns.

- The row is read through the source kind (`Kind.read_row`), with the DSN resolved as
  every console read resolves it (`syncer.dsn.resolve`) and within `timeout`; it is
  shown as the sink would write it (`syncer.engine.verify.as_written`), which is what
  the indexed `_source` is compared with.
- The document is read from the subscription's index as the worker reaches it
  (`syncer.wiring.sink_config`); its version is the position of its last write.
- A source or an index that cannot be read is reported in the trace (`row_error`,
  `document_error`, agreement `unknown`), never raised: the rest is still worth seeing.
- The console keeps no record of past live events (the monitor is best effort and
  keeps nothing, DESIGN.md invariant 5): the trace says so, and the admin's page shows
  this document's events as they arrive, from the subscription's events websocket.

Every text is redacted: a password never appears in a trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg.conninfo

from syncer import dsn
from syncer.engine.changes import Document, doc_id
from syncer.engine.verify import as_written
from syncer.errors import InvalidKey, SourceConfigError, SyncError, UnsetVariable
from syncer.models import DeadLetter, Subscription, doc_id_digest
from syncer.sinks.opensearch.client import INDEX_NOT_FOUND, answer_of
from syncer.sinks.opensearch.sink import read_document
from syncer.sources.kinds import format_position
from syncer.sources.lookup import FoundRow, RowLookup, parse_key
from syncer.text import redact
from syncer.wiring import sink_config

TIMEOUT = 5.0
"""Seconds the source, and OpenSearch, each have to answer."""

NO_RECENT_EVENTS = (
    "none known: the console keeps no record of past live events (the monitor is best "
    "effort and stores nothing); the admin's trace page shows this document's events as "
    "they arrive"
)


DEAD_LETTERS_HIDDEN = (
    "dead letters are not looked up: they are shown to users with the permission "
    "syncer.view_deadletter"
)


class Agreement(enum.StrEnum):
    AGREE = "agree"
    DIFFER = "differ"
    ROW_MISSING = "row_missing"
    """The source has no such row, but the index holds a document."""
    DOCUMENT_MISSING = "document_missing"
    BOTH_ABSENT = "both_absent"
    UNKNOWN = "unknown"
    """The source or the index could not be read."""


AGREEMENT_TEXT = {
    Agreement.AGREE: "agree: the document is the row as the sink writes it",
    Agreement.DIFFER: "differ: the document is not the row as the sink would write it",
    Agreement.ROW_MISSING: "row missing: the source has no such row, but the index holds "
    "the document",
    Agreement.DOCUMENT_MISSING: "document missing: the source has the row, but the index "
    "has no document",
    Agreement.BOTH_ABSENT: "both absent: neither the source nor the index has it",
    Agreement.UNKNOWN: "unknown: the source or the index could not be read",
}


@dataclass(frozen=True)
class Indexed:
    """The document as the index holds it."""

    index: str
    """The index that holds it (an alias's index, for an alias)."""
    version: int | None
    """Its external version: the source position of its last write."""
    position_shown: str
    source: Document


@dataclass(frozen=True)
class DeadLetterSeen:
    """The document's entry in the dead-letter queue."""

    id: int
    action: str
    version: int
    position_shown: str
    attempts: int
    error: str
    """`<status> <type>: <reason>`, as OpenSearch gave it."""
    first_failed_at: datetime
    last_attempt_at: datetime


@dataclass(frozen=True)
class Trace:
    """One document of one subscription, from its row to its document."""

    subscription: str
    source_kind: str
    relation: str
    index: str
    doc_id: str
    """The document's id: as typed, or as the row's key makes it (`05` for 5 is `5`)."""
    key_columns: tuple[str, ...]
    """Empty when the source could not tell them (a PostgreSQL primary key, unread)."""
    key: tuple[str, ...]
    row: Document | None
    """The row as the sink would write it; None when the source has none (or unread)."""
    row_error: str | None
    document: Indexed | None
    document_error: str | None
    agreement: Agreement
    differing: tuple[str, ...]
    """The fields whose values differ (or that only one side has), when they differ."""
    checkpoint: int | None
    checkpoint_shown: str
    dead_letter: DeadLetterSeen | None
    notes: tuple[str, ...] = ()
    """What else a person should know (no index yet, a write in flight...)."""

    @property
    def in_flight(self) -> bool:
        """The document's version is newer than the checkpoint: its write is acknowledged
        by OpenSearch, but the subscription's checkpoint has not reached it yet."""
        version = self.document.version if self.document is not None else None
        return version is not None and (self.checkpoint is None or version > self.checkpoint)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as `trace --json` prints it and the API answers."""
        document = self.document
        dead = self.dead_letter
        return {
            "subscription": self.subscription,
            "source_kind": self.source_kind,
            "relation": self.relation,
            "index": self.index,
            "doc_id": self.doc_id,
            "key": dict(zip(self.key_columns, self.key, strict=True)) if self.key else None,
            "key_columns": list(self.key_columns),
            "row": self.row,
            "row_error": self.row_error,
            "document": None if document is None else dataclasses.asdict(document),
            "document_error": self.document_error,
            "agreement": self.agreement.value,
            "agreement_text": AGREEMENT_TEXT[self.agreement],
            "differing": list(self.differing),
            "checkpoint": self.checkpoint,
            "checkpoint_shown": self.checkpoint_shown,
            "in_flight": self.in_flight,
            "dead_letter": None
            if dead is None
            else {
                **dataclasses.asdict(dead),
                "first_failed_at": dead.first_failed_at.isoformat(),
                "last_attempt_at": dead.last_attempt_at.isoformat(),
            },
            "recent_events": {"known": False, "events": [], "note": NO_RECENT_EVENTS},
            "notes": list(self.notes),
        }


async def trace(
    subscription: Subscription,
    key: str,
    timeout: float = TIMEOUT,
    *,
    dead_letters: bool = True,
) -> Trace:
    """Read the row, the document and the dead letter of `key`, and compare them.

    `dead_letters`: whether the caller may see dead letters (the view permission on
    them); if not, none is looked up and the trace says why. InvalidKey when `key` does
    not fit the subscription's key columns; nothing else raises: what cannot be read is
    said in the trace.
    """
    sub = subscription
    if "\x00" in key:  # no source value holds one, and no database query may carry it
        raise InvalidKey("a document key cannot contain a NUL character")
    configured = tuple(sub.key_columns or ())
    if configured:
        parse_key(key, configured, sub.relation)  # refused before anything is read
    elif not key:
        raise InvalidKey(f"give a document key: the primary key's value in {sub.relation}")
    found, (document, document_error, notes), dead = await asyncio.gather(
        _read_row(sub, key, timeout),
        _read_document(sub, key, timeout),
        _dead_letter(sub, key, dead_letters),
    )
    if isinstance(found, InvalidKey):  # returned, so that the other reads end first
        raise found
    shown_id = key
    row: Document | None = None
    row_error: str | None = None
    if isinstance(found, FoundRow):
        row = None if found.row is None else as_written(found.row)
        if found.row is not None:
            own = doc_id(tuple(found.row.get(column) for column in found.key_columns))
            if own != key:  # typed otherwise than the sync writes it, e.g. 05 for 5
                shown_id = own
                (document, document_error, notes), dead = await asyncio.gather(
                    _read_document(sub, own, timeout), _dead_letter(sub, own, dead_letters)
                )
    else:
        row_error = found
    agreement, differing = _compare(row, row_error, document, document_error)
    trace = Trace(
        subscription=sub.name,
        source_kind=sub.source_kind,
        relation=sub.relation,
        index=sub.index_name,
        doc_id=shown_id,
        key_columns=found.key_columns if isinstance(found, FoundRow) else configured,
        key=found.key if isinstance(found, FoundRow) else _typed_key(key, configured),
        row=row,
        row_error=row_error,
        document=document,
        document_error=document_error,
        agreement=agreement,
        differing=differing,
        checkpoint=sub.checkpoint,
        checkpoint_shown=format_position(sub.source_kind, sub.checkpoint),
        dead_letter=dead,
    )
    if not dead_letters:
        notes = [*notes, DEAD_LETTERS_HIDDEN]
    return dataclasses.replace(trace, notes=(*notes, *_notes(trace)))


def _typed_key(key: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    return parse_key(key, columns, "") if columns else ()


def _compare(
    row: Document | None,
    row_error: str | None,
    document: Indexed | None,
    document_error: str | None,
) -> tuple[Agreement, tuple[str, ...]]:
    if row_error is not None or document_error is not None:
        return Agreement.UNKNOWN, ()
    if row is None:
        return (Agreement.BOTH_ABSENT if document is None else Agreement.ROW_MISSING), ()
    if document is None:
        return Agreement.DOCUMENT_MISSING, ()
    fields = sorted(set(row) | set(document.source))
    differing = tuple(
        field
        for field in fields
        if field not in row or field not in document.source or row[field] != document.source[field]
    )
    return (Agreement.DIFFER if differing else Agreement.AGREE), differing


def _notes(trace: Trace) -> list[str]:
    notes = []
    if trace.agreement is Agreement.DIFFER and trace.in_flight:
        notes.append(
            "the document is newer than the checkpoint: the difference may be a change in "
            "flight that the source has made since; trace again in a moment"
        )
    dead = trace.dead_letter
    if dead is not None and trace.document is not None and trace.document.version is not None:
        if dead.version > trace.document.version:
            notes.append(
                "the dead letter is newer than the document: the index holds an older "
                "version than the source sent; retry the dead letter once its cause is fixed"
            )
    return notes


# -- the three reads ---------------------------------------------------------------------


async def _read_row(sub: Subscription, key: str, timeout: float) -> FoundRow | str | InvalidKey:
    """The row, or why it could not be read, or the key's refusal."""
    read = sub.kind.read_row
    if read is None:
        return f"{sub.kind.label} sources cannot be read by key"
    try:
        conninfo = dsn.resolve(sub.source_dsn)
    except UnsetVariable as exc:
        return (
            f"the environment variable {exc.name} is not set in the console's environment, "
            "so the source cannot be read; set it here as for the worker"
        )
    except SourceConfigError as exc:  # its message names the variable, never the value
        return str(exc)
    lookup = RowLookup(
        conninfo=conninfo,
        relation=sub.relation,
        key_columns=tuple(sub.key_columns or ()),
        doc_id=key,
        cluster=sub.source_cluster,
        connect_timeout=max(2, int(timeout)),
        statement_timeout_ms=int(timeout * 1000),
    )
    try:
        return await asyncio.wait_for(read(lookup), timeout)
    except InvalidKey as exc:
        return exc
    except TimeoutError:
        return f"the source did not answer within {timeout:g} s; check that it is up"
    except SyncError as exc:
        return _clean(str(exc), conninfo)


async def _read_document(
    sub: Subscription, doc_id: str, timeout: float
) -> tuple[Indexed | None, str | None, list[str]]:
    """(the document or None, why it could not be read, notes)."""
    config = dataclasses.replace(sink_config(sub), timeout=timeout)
    index = sub.index_name
    try:
        found = await asyncio.wait_for(read_document(config, doc_id), timeout + 1)
    except TimeoutError:
        return None, f"OpenSearch did not answer within {timeout:g} s", []
    except SyncError as exc:
        answer = answer_of(exc)
        if answer.error_type == INDEX_NOT_FOUND:
            note = f"index {index!r} does not exist yet: the worker creates it when it starts"
            return None, None, [note]
        if not answer.status:
            return None, redact(f"cannot reach OpenSearch: {answer.error}"), []
        return None, redact(f"OpenSearch refused to read index {index!r}: {answer.error}"), []
    if found is None:
        return None, None, []
    version = found.get("_version")
    return (
        Indexed(
            index=str(found.get("_index", index)),
            version=version,
            position_shown=format_position(sub.source_kind, version),
            source=found.get("_source") or {},
        ),
        None,
        [],
    )


async def _dead_letter(sub: Subscription, doc_id: str, allowed: bool) -> DeadLetterSeen | None:
    if not allowed:
        return None
    entry = await DeadLetter.objects.filter(
        subscription=sub, doc_id_digest=doc_id_digest(doc_id), doc_id=doc_id
    ).afirst()
    if entry is None:
        return None
    error = f"{entry.error_status or ''} {entry.error_type}: {entry.error_reason}".strip()
    return DeadLetterSeen(
        id=entry.pk,
        action=entry.action,
        version=entry.version,
        position_shown=format_position(sub.source_kind, entry.version),
        attempts=entry.attempts,
        error=redact(error),
        first_failed_at=entry.first_failed_at,
        last_attempt_at=entry.last_attempt_at,
    )


def _clean(message: str, conninfo: str) -> str:
    """`message` redacted, and without the DSN's password even where redact cannot tell it."""
    text = redact(message)
    try:
        password = psycopg.conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        return text
    # A very short password would match ordinary words; redact() already hid it in DSNs.
    return text.replace(str(password), "***") if password and len(str(password)) >= 4 else text
