"""`/api/subscriptions/{name}/documents/...`: the subscription's index as it holds them.

- `GET .../documents/{id}`: one document (the live tail links each document id here);
- `GET .../documents?id=ID`: the same, for an id that is a route of its own (`export`);
- `GET .../documents/export`: every document as NDJSON (`syncer.operations.exports`),
  served by the ASGI server only, and registered before `{id}` so that it wins.

OpenSearch is reached with the subscription's own sink settings
(`syncer.wiring.sink_config`), as the worker reaches it; the index is never created by a read.
"""

from __future__ import annotations

from typing import Any

import structlog
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from console.api.errors import NotFound
from console.api.permissions import VIEW_SUBSCRIPTION, requires
from syncer.errors import SyncError
from syncer.models import Subscription
from syncer.operations import exports, subscriptions
from syncer.sinks.opensearch.client import INDEX_NOT_FOUND, answer_of
from syncer.sinks.opensearch.sink import read_document
from syncer.sources.kinds import format_position
from syncer.wiring import sink_config

log = structlog.get_logger(__name__)
router = Router(tags=["subscriptions"])


class DocumentOut(Schema):
    subscription: str
    index: str = Field(description="The index that holds it (the alias's index for an alias).")
    id: str
    version: int | None = Field(description="Its external version: the source position.")
    position_shown: str = Field(description="The version as the source's own tools show it.")
    document: dict[str, Any] = Field(description="The document's _source.")


@router.get("/{name}/documents/export", include_in_schema=False, summary="Export an index")
@requires(VIEW_SUBSCRIPTION)
async def export_documents(request: HttpRequest, name: str) -> StreamingHttpResponse:
    """Every document of the index (or alias) as NDJSON, in one consistent read, the
    summary line last (see syncer.operations.exports). Needs the ASGI server (daphne)."""
    subscription = await subscriptions.anamed(name)
    if not isinstance(request, ASGIRequest):
        raise HttpError(
            501, "the export is streamed by the ASGI server: run `daphne console.asgi:application`"
        )
    try:
        export = await exports.open_index_export(subscription)
    except SyncError as exc:
        raise _refusal(subscription, exc) from exc
    response = StreamingHttpResponse(export.lines(), content_type=exports.NDJSON)
    response["Content-Disposition"] = f'attachment; filename="{subscription.name}.ndjson"'
    response["Cache-Control"] = "no-store"
    return response


@router.get("/{name}/documents", response=DocumentOut, summary="Read an indexed document by id")
@requires(VIEW_SUBSCRIPTION)
async def get_document_by_id(request: HttpRequest, name: str, id: Query[str]) -> dict[str, Any]:
    """As `GET /{name}/documents/{id}`, the id as a parameter: the way to read a document
    whose id is `export`, which `GET /{name}/documents/export` exports instead."""
    return await _document(name, id)


@router.get(
    "/{name}/documents/{path:doc_id}", response=DocumentOut, summary="Read an indexed document"
)
@requires(VIEW_SUBSCRIPTION)
async def get_document(request: HttpRequest, name: str, doc_id: str) -> dict[str, Any]:
    """The document `doc_id` as OpenSearch holds it now; 404 when the index has none.

    A document whose id is `export` is read with `GET /{name}/documents?id=export`: this
    path exports the whole index."""
    return await _document(name, doc_id)


async def _document(name: str, doc_id: str) -> dict[str, Any]:
    subscription = await subscriptions.anamed(name)
    found = await _read(subscription, doc_id)
    version = found.get("_version")
    return {
        "subscription": subscription.name,
        "index": str(found.get("_index", subscription.index_name)),
        "id": doc_id,
        "version": version,
        "position_shown": format_position(subscription.source_kind, version),
        "document": found.get("_source") or {},
    }


async def _read(subscription: Subscription, doc_id: str) -> dict[str, Any]:
    try:
        found = await read_document(sink_config(subscription), doc_id)
    except SyncError as exc:
        raise _refusal(subscription, exc) from exc
    if found is None:
        raise NotFound(f"no document {doc_id!r} in index {subscription.index_name!r}")
    return found


def _refusal(subscription: Subscription, exc: SyncError) -> HttpError:
    """The API's answer to an index OpenSearch would not read: 404 when there is none."""
    index = subscription.index_name
    answer = answer_of(exc)
    if answer.error_type == INDEX_NOT_FOUND:
        return NotFound(
            f"index {index!r} does not exist yet: the worker creates it when "
            f"subscription {subscription.name!r} starts"
        )
    if not answer.status:
        return HttpError(503, f"cannot reach OpenSearch: {answer.error}")
    log.warning(
        "document_read_failed",
        subscription=subscription.name,
        status=answer.status,
        error=answer.error,
    )
    refused = f"{answer.status} {answer.error}"
    return HttpError(503, f"OpenSearch refused to read index {index!r}: {refused}")
