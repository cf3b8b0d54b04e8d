"""Which indexes are searchsync's: the mark in an index's mapping `_meta`.

Every index searchsync creates carries `{"managed_by": "searchsync", "subscription":
<name>}` in its mapping `_meta`, merged with the subscription's own mappings. Only a
marked index may be swept, swapped away from or deleted: an index another application
made may hold documents searchsync never wrote. A subscription that adopts an existing
index marks it, so every later check passes. `_meta` is part of the public mapping
API (GET/PUT `/<index>/_mapping`) in OpenSearch 2.x and 3.x.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from opensearchpy import AsyncOpenSearch

from syncer.errors import ForeignIndex
from syncer.sinks.opensearch.client import none_if

log = structlog.get_logger(__name__)

MANAGED_BY = "searchsync"
ADOPT_HINT = (
    "If the index holds only this subscription's documents, let searchsync own it: set "
    "index.adopt: true (subscriptions file or API; “Adopt index” in the admin). Otherwise "
    "give the subscription an index of its own."
)


def mark(subscription: str) -> dict[str, str]:
    """What searchsync writes into the `_meta` of an index it owns."""
    return {"managed_by": MANAGED_BY, "subscription": subscription}


def marked_mappings(mappings: dict[str, Any], subscription: str) -> dict[str, Any]:
    """The subscription's mappings with the mark merged into their `_meta`."""
    own = mappings.get("_meta")
    meta = dict(own) if isinstance(own, dict) else {}
    return {**mappings, "_meta": {**meta, **mark(subscription)}}


async def unmarked(client: AsyncOpenSearch, name: str) -> list[str]:
    """The indexes `name` (an index or an alias) stands for that searchsync did not mark."""
    metas = await _metas(client, name)
    return sorted(index for index, meta in metas.items() if meta.get("managed_by") != MANAGED_BY)


async def adopt(client: AsyncOpenSearch, name: str, subscription: str) -> list[str]:
    """Mark the unmarked indexes behind `name` as `subscription`'s; return them.

    A `_meta` update replaces the whole object, so what another tool put there is kept
    by merging it in.
    """
    metas = await _metas(client, name)
    adopted = sorted(i for i, meta in metas.items() if meta.get("managed_by") != MANAGED_BY)
    for index in adopted:
        body = {"_meta": {**metas[index], **mark(subscription)}}
        await client.indices.put_mapping(index=index, body=body)
        log.info("index_adopted", subscription=subscription, index=index)
    return adopted


def refusal(doing: str, name: str, foreign: Sequence[str], consequence: str) -> ForeignIndex:
    """The error for refusing `doing` on `name`, whose indexes `foreign` are not ours."""
    which = f"index {name}" if list(foreign) == [name] else f"{name} (index {', '.join(foreign)})"
    return ForeignIndex(
        f"refusing to {doing}: searchsync did not create {which} (its mapping _meta has no "
        f"managed_by: {MANAGED_BY}), and {consequence}. {ADOPT_HINT}"
    )


async def _metas(client: AsyncOpenSearch, name: str) -> dict[str, dict[str, Any]]:
    response = await none_if(404, client.indices.get_mapping(index=name))
    if response is None:
        return {}
    metas: dict[str, dict[str, Any]] = {}
    for index, body in response.items():
        meta = (body.get("mappings") or {}).get("_meta") if isinstance(body, dict) else None
        metas[index] = dict(meta) if isinstance(meta, dict) else {}
    return metas
