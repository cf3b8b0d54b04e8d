"""A subscription's index as a verification reads and repairs it (`syncer.engine.verify.Index`).

Reads go through the sink's client: documents by id with their versions (one `mget`),
and every document a page at a time in one view of the index (`export.index_pages`).
Repairs are the sink's own versioned writes and guarded deletes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from syncer.engine.changes import Change, Position
from syncer.engine.outcomes import ItemResult
from syncer.engine.verify import Indexed
from syncer.sinks.opensearch.client import translated
from syncer.sinks.opensearch.export import index_pages
from syncer.sinks.opensearch.sink import OpenSearchSink


class VerifiedIndex:
    def __init__(self, sink: OpenSearchSink) -> None:
        self.sink = sink
        self.index = sink.config.index

    async def open(self) -> None:
        """Connect; the index is not created (a missing one fails the first read)."""
        await self.sink.connect()

    async def close(self) -> None:
        await self.sink.close()

    async def count(self) -> int:
        client = self.sink.client
        with translated(f"counting the documents of index {self.index}"):
            await client.indices.refresh(index=self.index)
            answer = await client.count(index=self.index)
        return int(answer["count"])

    async def indexed(self, doc_ids: Sequence[str]) -> dict[str, Indexed]:
        if not doc_ids:
            return {}
        with translated(f"reading from index {self.index}"):
            answer = await self.sink.client.mget(index=self.index, body={"ids": list(doc_ids)})
        return {
            d["_id"]: Indexed(int(d["_version"]), d.get("_source") or {})
            for d in answer["docs"]
            if d.get("found")
        }

    async def pages(self, size: int) -> AsyncIterator[dict[str, Indexed]]:
        async for hits in index_pages(self.sink.config, page_size=size):
            yield {hit.id: Indexed(hit.version or 0, hit.source) for hit in hits}

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        return await self.sink.write(changes)

    async def delete_unchanged(self, doc_ids: Sequence[str], upto: Position) -> int:
        return await self.sink.delete_unchanged(doc_ids, upto)
