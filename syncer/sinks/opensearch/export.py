"""Reading a whole index (or alias) back, a page at a time: `index_pages`.

The read is one consistent view of the index, whatever is written meanwhile, and costs
one page of memory (`PAGE_SIZE` documents) however large the index is:
- a point in time (PIT) paged with `search_after` on `_shard_doc`, where the server has
  both (OpenSearch 3.3 and later);
- else a scroll sorted on `_doc`, which every OpenSearch version has. OpenSearch 2.4 to
  3.2 create a PIT but cannot sort on `_shard_doc` (a 400, "No mapping found for
  [_shard_doc]"), and no other sort both orders every document once across shards and
  is cheap: `_id` would load every id into the cluster's heap.

Every hit carries its `_version` (asked with `version: true`): the source position the
worker wrote it with. A refusal before the first page (no such index: 404
`index_not_found_exception`) is raised as `translated` words it, before anything is
yielded; a failure on a later page is raised between pages, so a caller can tell a
complete read from a cut one. The PIT or scroll is released at the end, and expires on
its own (`KEEP_ALIVE` after the last page) when it cannot be.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from opensearchpy import AsyncOpenSearch

from syncer.errors import SinkConfigError, SyncError
from syncer.sinks.opensearch.client import INDEX_NOT_FOUND, answer_of, async_client, translated

if TYPE_CHECKING:  # sink.py reads its index's pages through this module
    from syncer.sinks.opensearch.sink import OpenSearchSinkConfig

log = structlog.get_logger(__name__)

PAGE_SIZE = 1000
KEEP_ALIVE = "5m"
"""How long OpenSearch keeps the view between two pages (a slow reader's page)."""

SHARD_DOC = "_shard_doc"


@dataclass(frozen=True, slots=True)
class Hit:
    """One document as the index holds it."""

    id: str
    version: int | None
    """Its external version: the source position it was written with."""
    source: dict[str, Any]


@dataclass
class ReadMethod:
    """How the read goes; `name` is set once the first page came: `pit` or `scroll`."""

    name: str = ""


async def count_documents(config: OpenSearchSinkConfig) -> int:
    """How many documents `config.index` holds now (`_count`): a progress bar's total."""
    client = async_client(config.connection, config.timeout)
    try:
        with translated(f"counting the documents of index {config.index}"):
            answer = await client.count(index=config.index)
        return int(answer["count"])
    finally:
        await client.close()


async def index_pages(
    config: OpenSearchSinkConfig,
    *,
    page_size: int = PAGE_SIZE,
    method: ReadMethod | None = None,
    tiebreaker: str = SHARD_DOC,
) -> AsyncGenerator[list[Hit], None]:
    """Every document of `config.index`, `page_size` at a time, in one consistent view.

    `method` is told which read was chosen. `tiebreaker` is the PIT's sort: `_shard_doc`;
    any field unique per document would do as well (the tests page osmem's PIT on `_id`).
    """
    chosen = method if method is not None else ReadMethod()
    client = async_client(config.connection, config.timeout)
    try:
        pages = await _pit_read(client, config.index, page_size, tiebreaker)
        chosen.name = "pit"
        if pages is None:
            chosen.name = "scroll"
            pages = _scroll_pages(client, config.index, page_size)
        async with contextlib.aclosing(pages):
            async for page in pages:
                yield page
    finally:
        await client.close()


async def _pit_read(
    client: AsyncOpenSearch, index: str, page_size: int, tiebreaker: str
) -> AsyncGenerator[list[Hit], None] | None:
    """The PIT's pages, or None where the server has no PIT sorted on `tiebreaker`."""
    pit_id = await _create_pit(client, index)
    if pit_id is None:
        return None
    try:
        first = await _first_pit_page(client, index, pit_id, page_size, tiebreaker)
    except BaseException:
        await _delete_pit(client, pit_id)
        raise
    if first is None:
        await _delete_pit(client, pit_id)
        return None
    return _pit_pages(client, index, first, pit_id, page_size, tiebreaker)


async def _create_pit(client: AsyncOpenSearch, index: str) -> str | None:
    """A PIT over `index`, or None where the server makes none (before OpenSearch 2.4,
    or a user without the permission to): the scroll is then the way."""
    try:
        with translated(f"opening a point in time on index {index}"):
            answer = await client.create_pit(index=index, params={"keep_alive": KEEP_ALIVE})
    except SinkConfigError as exc:
        if answer_of(exc).error_type == INDEX_NOT_FOUND:
            raise
        log.info("index_export_without_pit", index=index, reason=str(exc))
        return None
    return str(answer["pit_id"])


def _pit_body(pit_id: str, page_size: int, tiebreaker: str) -> dict[str, Any]:
    return {
        "size": page_size,
        "version": True,
        "track_total_hits": False,
        "pit": {"id": pit_id, "keep_alive": KEEP_ALIVE},
        "sort": [{tiebreaker: "asc"}],
    }


async def _first_pit_page(
    client: AsyncOpenSearch, index: str, pit_id: str, page_size: int, tiebreaker: str
) -> dict[str, Any] | None:
    """The PIT's first answer, or None when the server cannot sort on `tiebreaker`
    (a 400: OpenSearch before 3.3 has no `_shard_doc`)."""
    try:
        with translated(f"reading index {index}"):
            answer: dict[str, Any] = await client.search(
                body=_pit_body(pit_id, page_size, tiebreaker)
            )
    except SinkConfigError as exc:
        if answer_of(exc).status != 400:
            raise
        log.info("index_export_pit_unsorted", index=index, reason=str(exc))
        return None
    return answer


async def _pit_pages(
    client: AsyncOpenSearch,
    index: str,
    answer: dict[str, Any],
    pit_id: str,
    page_size: int,
    tiebreaker: str,
) -> AsyncGenerator[list[Hit], None]:
    try:
        while True:
            pit_id = str(answer.get("pit_id") or pit_id)  # a server may give a new id
            hits = answer["hits"]["hits"]
            if hits:
                yield [_hit(h) for h in hits]
            if len(hits) < page_size:
                return
            body = _pit_body(pit_id, page_size, tiebreaker)
            body["search_after"] = hits[-1]["sort"]
            with translated(f"reading index {index}"):
                answer = await client.search(body=body)
    finally:
        await _delete_pit(client, pit_id)


async def _scroll_pages(
    client: AsyncOpenSearch, index: str, page_size: int
) -> AsyncGenerator[list[Hit], None]:
    scroll_id = None
    try:
        with translated(f"reading index {index}"):
            answer = await client.search(
                index=index,
                scroll=KEEP_ALIVE,
                body={"size": page_size, "version": True, "sort": ["_doc"]},
            )
        while True:
            scroll_id = answer.get("_scroll_id") or scroll_id
            hits = answer["hits"]["hits"]
            if not hits:
                return
            yield [_hit(h) for h in hits]
            with translated(f"reading index {index}"):
                answer = await client.scroll(scroll_id=scroll_id, scroll=KEEP_ALIVE)
    finally:
        if scroll_id:
            # Best effort: a scroll left open expires on its own after KEEP_ALIVE.
            with contextlib.suppress(SyncError), translated("clearing the scroll"):
                await client.clear_scroll(scroll_id=scroll_id)


async def _delete_pit(client: AsyncOpenSearch, pit_id: str) -> None:
    # Best effort, as for a scroll: a PIT left open expires after KEEP_ALIVE.
    with contextlib.suppress(SyncError), translated("deleting the point in time"):
        await client.delete_pit(body={"pit_id": [pit_id]})


def _hit(hit: dict[str, Any]) -> Hit:
    version = hit.get("_version")
    source = hit.get("_source")  # none where the mapping disables _source
    return Hit(str(hit["_id"]), int(version) if version is not None else None, source or {})
