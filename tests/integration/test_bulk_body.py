"""The sink's `_bulk` body: every change on its own lines, built in one buffer.

orjson gives every result a block of at least 4 KB, so a body kept as a list of lines
until it is joined held about 4 KB per line, 8.6 MB for a 1,000-document bulk of 0.3 MB
(issue 15, "Peak worker RSS"): the worker's peak during a backfill. A real osmem-server
takes the bulk and tells what it stored.
"""

from __future__ import annotations

import asyncio
import tracemalloc

from opensearchpy import OpenSearch

from syncer.engine.changes import Change, Op
from syncer.engine.outcomes import Outcome
from syncer.sinks.opensearch.connection import Connection
from syncer.sinks.opensearch.sink import OpenSearchSink, OpenSearchSinkConfig

DOCUMENTS = 1000


def upsert(n: int, version: int) -> Change:
    doc = {"id": n, "title": f"item {n} with a title of some forty chars", "tags": [n, n + 1]}
    return Change(Op.UPSERT, str(n), (n,), version, 0.0, doc=doc)


def write(url: str, changes: list[Change]) -> tuple[list[Outcome], int]:
    """Write `changes` as one bulk; each item's outcome, and the peak of memory traced
    while the sink built, sent and read back the bulk."""

    async def run() -> tuple[list[Outcome], int]:
        sink = OpenSearchSink(
            OpenSearchSinkConfig(name="orders", index="orders", connection=Connection(url))
        )
        await sink.open()
        try:
            await sink.write([upsert(0, 1)])  # the client's connection and first answer
            tracemalloc.start()
            try:
                results = await sink.write(changes)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            return [r.outcome for r in results], peak
        finally:
            await sink.close()

    return asyncio.run(run())


def test_a_bulk_writes_every_change_and_holds_about_its_own_size(
    opensearch_url: str, search: OpenSearch
) -> None:
    changes = [upsert(n, 10) for n in range(DOCUMENTS)]
    outcomes, peak = write(opensearch_url, changes)
    assert outcomes == [Outcome.OK] * DOCUMENTS
    search.indices.refresh(index="orders")
    assert search.count(index="orders")["count"] == DOCUMENTS
    assert search.get(index="orders", id="7")["_source"]["tags"] == [7, 8]
    # 3.3 MB, most of it OpenSearch's answer read and parsed; the lines held in a list
    # until they were joined made it 8.5 MB.
    assert peak < 5_000_000, f"{peak:,} bytes traced while writing {DOCUMENTS} documents"


def test_deletes_and_stale_versions_come_back_per_item(
    opensearch_url: str, search: OpenSearch
) -> None:
    write(opensearch_url, [upsert(n, 10) for n in range(1, 4)])
    outcomes, _ = write(
        opensearch_url,
        [Change(Op.DELETE, "1", (1,), 11, 0.0), upsert(2, 5), upsert(3, 12)],
    )
    assert outcomes == [Outcome.OK, Outcome.STALE, Outcome.OK]
    search.indices.refresh(index="orders")
    assert not search.exists(index="orders", id="1")
    assert search.get(index="orders", id="3")["_version"] == 12
