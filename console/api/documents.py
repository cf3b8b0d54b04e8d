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
from opensearchpy import exceptions as os_errors

from console.api.errors import NotFound
from console.api.permissions import VIEW_SUBSCRIPTION, requires
from syncer.logconfig import redact
from syncer.models import Subscription
from syncer.operations import subscriptions
from syncer.sinks.opensearch.sink import make_client
from syncer.sources.positions import format_position
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
    client = make_client(sink_config(subscription))
    try:
        found: dict[str, Any] = await client.get(index=index, id=doc_id)
        return found
    except os_errors.NotFoundError as exc:
        if _error_type(exc) == "index_not_found_exception":
            raise NotFound(
                f"index {index!r} does not exist yet: the worker creates it when "
                f"subscription {subscription.name!r} starts"
            ) from exc
        raise NotFound(f"no document {doc_id!r} in index {index!r}") from exc
    except (os_errors.ConnectionError, os_errors.ConnectionTimeout) as exc:
        raise HttpError(503, f"cannot reach OpenSearch: {redact(str(exc.error))}") from exc
    except os_errors.TransportError as exc:
        log.warning(
            "document_read_failed",
            subscription=subscription.name,
            status=exc.status_code,
            error=redact(str(exc.error)),
        )
        refused = f"{exc.status_code} {redact(str(exc.error))}"
        raise HttpError(503, f"OpenSearch refused to read index {index!r}: {refused}") from exc
    finally:
        await client.close()


def _error_type(exc: os_errors.TransportError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    return str(error.get("type", "")) if isinstance(error, dict) else ""
