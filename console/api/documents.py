"""`/api/subscriptions/{name}/documents/{id}`: a document as the subscription's index holds it.

The live tail links each document id here. OpenSearch is reached with the subscription's
own sink settings (`syncer.wiring.sink_config`), as the worker reaches it; the index is never
created by a read.
"""

from __future__ import annotations

from typing import Any

import structlog
from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from console.api.errors import NotFound
from console.api.permissions import VIEW_SUBSCRIPTION, requires
from syncer.errors import SyncError
from syncer.models import Subscription
from syncer.operations import subscriptions
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


@router.get(
    "/{name}/documents/{path:doc_id}", response=DocumentOut, summary="Read an indexed document"
)
@requires(VIEW_SUBSCRIPTION)
async def get_document(request: HttpRequest, name: str, doc_id: str) -> dict[str, Any]:
    """The document `doc_id` as OpenSearch holds it now; 404 when the index has none."""
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
    index = subscription.index_name
    try:
        found = await read_document(sink_config(subscription), doc_id)
    except SyncError as exc:
        answer = answer_of(exc)
        if answer.error_type == INDEX_NOT_FOUND:
            raise NotFound(
                f"index {index!r} does not exist yet: the worker creates it when "
                f"subscription {subscription.name!r} starts"
            ) from exc
        if not answer.status:
            raise HttpError(503, f"cannot reach OpenSearch: {answer.error}") from exc
        log.warning(
            "document_read_failed",
            subscription=subscription.name,
            status=answer.status,
            error=answer.error,
        )
        refused = f"{answer.status} {answer.error}"
        raise HttpError(503, f"OpenSearch refused to read index {index!r}: {refused}") from exc
    if found is None:
        raise NotFound(f"no document {doc_id!r} in index {index!r}")
    return found
