"""`/api/subscriptions/{name}/trace/{key}`: one document end to end (`syncer.operations.trace`).

The key is the document id as the monitor and the dead letters show it (composite keys:
values joined by `|`, `\\` and `|` inside a value escaped); percent-encode it in the path.
A key that does not fit the key columns is a 422 naming them. A source or an index that
cannot be read is said in the answer (`row_error`, `document_error`), not as an error
status: the rest of the trace is still an answer.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Field, Router, Schema

from console.api.auth import caller, missing_permission
from console.api.errors import FieldErrors
from console.api.permissions import VIEW_DEAD_LETTER, VIEW_SUBSCRIPTION, requires
from syncer.errors import InvalidKey
from syncer.operations import subscriptions
from syncer.operations.trace import Agreement, trace

router = Router(tags=["subscriptions"])


class IndexedOut(Schema):
    index: str = Field(description="The index that holds it (the alias's index for an alias).")
    version: int | None = Field(description="Its external version: the source position.")
    position_shown: str = Field(description="The version as the source's own tools show it.")
    source: dict[str, Any] = Field(description="The document's _source.")


class DeadLetterOut(Schema):
    id: int
    action: str
    version: int
    position_shown: str
    attempts: int
    error: str
    first_failed_at: str
    last_attempt_at: str


class RecentEventsOut(Schema):
    known: bool = Field(description="False: the console keeps no record of past live events.")
    events: list[dict[str, Any]]
    note: str


class TraceOut(Schema):
    subscription: str
    source_kind: str
    relation: str
    index: str
    doc_id: str = Field(description="The document id (as the row's key makes it, if found).")
    key: dict[str, str] | None = Field(description="The key's values by column, when known.")
    key_columns: list[str]
    row: dict[str, Any] | None = Field(
        description="The source row now, as the sink would write it; null when there is none."
    )
    row_error: str | None = Field(description="Why the source row could not be read.")
    document: IndexedOut | None
    document_error: str | None = Field(description="Why the index could not be read.")
    agreement: Agreement
    agreement_text: str
    differing: list[str] = Field(description="The fields that differ, when they differ.")
    checkpoint: int | None
    checkpoint_shown: str
    in_flight: bool = Field(
        description="The document's version is newer than the checkpoint: a change in flight."
    )
    dead_letter: DeadLetterOut | None
    recent_events: RecentEventsOut
    notes: list[str]


@router.get("/{name}/trace/{path:key}", response=TraceOut, summary="Trace one document")
@requires(VIEW_SUBSCRIPTION)
async def trace_document(request: HttpRequest, name: str, key: str) -> dict[str, Any]:
    """The source row now, the document as indexed, whether they agree, its dead letter
    (for a caller who may also view dead letters)."""
    subscription = await subscriptions.anamed(name)
    lacks = await sync_to_async(missing_permission)(caller(request), [VIEW_DEAD_LETTER])
    try:
        found = await trace(subscription, key, dead_letters=lacks is None)
    except InvalidKey as exc:
        raise FieldErrors([("key", str(exc))]) from exc
    return found.as_dict()
