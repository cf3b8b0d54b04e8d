"""OpenSearch sink: versioned `_bulk` writes, index creation, outcome classification.

Every write carries the source position as an external version, so OpenSearch itself
refuses a write older than what it holds (409, counted as stale). The index it creates
carries searchsync's mark (`marks`); it writes into an existing index it did not
create, but sweeps only one it created or that the subscription adopts. Whole-request
failures raise SinkUnavailable or SinkConfigError; per-document failures come back
as `ItemResult`s. Only the public REST API is used, so this runs unchanged against
OpenSearch 2.x and 3.x.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from opensearchpy import AsyncOpenSearch

from syncer.engine.changes import Change, Document, Op, Position
from syncer.engine.outcomes import ItemResult, classify
from syncer.errors import SinkConfigError, SyncError
from syncer.sinks.opensearch import marks
from syncer.sinks.opensearch.client import (
    INDEX_NOT_FOUND,
    answer_of,
    async_client,
    error_reason,
    translated,
)
from syncer.sinks.opensearch.connection import Connection

log = structlog.get_logger(__name__)

# A bulk action line from its start to the id, then the id, the version (and the document).
_DELETE_LINE = b'%s%s,"version":%d,"version_type":"external"}}\n'
_INDEX_LINES = b'%s%s,"version":%d,"version_type":"external"}}\n%s\n'


@dataclass(frozen=True)
class OpenSearchSinkConfig:
    name: str
    index: str
    connection: Connection
    settings: dict[str, Any] = field(default_factory=dict)
    mappings: dict[str, Any] = field(default_factory=dict)
    timeout: float = 30.0
    adopt_index: bool = False
    """Own the index even though searchsync did not create it: mark it, sweep it."""


def make_client(config: OpenSearchSinkConfig) -> AsyncOpenSearch:
    return async_client(config.connection, config.timeout)


class OpenSearchSink:
    """Writes one subscription's documents into its index."""

    def __init__(self, config: OpenSearchSinkConfig) -> None:
        self.config = config
        self._client: AsyncOpenSearch | None = None
        self._log = log.bind(subscription=config.name, index=config.index)
        index = orjson.dumps(config.index)
        # The start of each bulk action line, up to its id (see `_payload`).
        self._upsert = b'{"index":{"_index":' + index + b',"_id":'
        self._delete = b'{"delete":{"_index":' + index + b',"_id":'

    async def open(self) -> None:
        self._client = make_client(self.config)
        with translated(f"checking index {self.config.index}"):
            if await self._client.indices.exists(index=self.config.index):
                if self.config.adopt_index:
                    await marks.adopt(self._client, self.config.index, self.config.name)
                return
        body: dict[str, Any] = {
            "mappings": marks.marked_mappings(self.config.mappings, self.config.name)
        }
        if self.config.settings:
            body["settings"] = self.config.settings
        try:
            with translated(f"creating index {self.config.index}"):
                await self._client.indices.create(index=self.config.index, body=body)
            self._log.info("index_created")
        except SinkConfigError as exc:
            # Another worker may have created it between the check and now.
            if answer_of(exc).error_type != "resource_already_exists_exception":
                raise

    async def connect(self) -> None:
        """Connect for reading (a verification's): the index is not created."""
        self._client = make_client(self.config)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        if not changes:
            return []
        client = self._require_client()
        with translated(f"writing to index {self.config.index}"):
            response = await client.bulk(body=self._payload(changes))
        results = []
        # An item without an error is told by its op and status alone: one result each.
        plain: dict[tuple[Op, int], ItemResult] = {}
        for change, item in zip(changes, response["items"], strict=True):
            (outcome,) = item.values()
            status = int(outcome.get("status", 500))
            error = outcome.get("error")
            if not error:
                result = plain.get((change.op, status))
                if result is None:
                    result = plain[change.op, status] = ItemResult(
                        classify(change.op, status), status
                    )
                results.append(result)
                continue
            error_type = str(error.get("type", "")) if isinstance(error, dict) else ""
            reason = error_reason(error)
            results.append(
                ItemResult(classify(change.op, status, error_type), status, error_type, reason)
            )
        return results

    def _payload(self, changes: Sequence[Change]) -> bytes:
        # Each action line is written around its id and version rather than dumped from
        # a dict of its own: 6x faster per change, the very same bytes (orjson's output,
        # kept alive in a list until the join, was most of the cost).
        upsert, delete, dumps = self._upsert, self._delete, orjson.dumps
        lines: list[bytes] = []
        for change in changes:
            if change.op is Op.DELETE:
                lines.append(_DELETE_LINE % (delete, dumps(change.doc_id), change.version))
            else:
                lines.append(
                    _INDEX_LINES
                    % (
                        upsert,
                        dumps(change.doc_id),
                        change.version,
                        dumps(change.doc, option=orjson.OPT_NON_STR_KEYS),
                    )
                )
        return b"".join(lines)

    async def fetch(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        if not doc_ids:
            return {}
        client = self._require_client()
        with translated(f"reading from index {self.config.index}"):
            response = await client.mget(index=self.config.index, body={"ids": list(doc_ids)})
        return {d["_id"]: d["_source"] for d in response["docs"] if d.get("found")}

    async def delete_unchanged(self, doc_ids: Sequence[str], upto: Position) -> int:
        """Delete those of `doc_ids` whose version is `upto` or older and that nothing
        writes meanwhile (each delete carries the `_seq_no` it was read with, so a write
        that lands in between wins); return how many went."""
        if not doc_ids:
            return 0
        client = self._require_client()
        index = self.config.index
        with translated(f"removing stale documents from {index}"):
            found = await client.mget(index=index, body={"ids": list(doc_ids)})
            lines = [
                orjson.dumps(
                    {
                        "delete": {
                            "_index": index,
                            "_id": d["_id"],
                            "if_seq_no": d["_seq_no"],
                            "if_primary_term": d["_primary_term"],
                        }
                    }
                )
                for d in found["docs"]
                if d.get("found") and int(d.get("_version", 0)) <= upto
            ]
            if not lines:
                return 0
            response = await client.bulk(body=b"\n".join(lines) + b"\n")
        return sum(1 for item in response["items"] if item["delete"].get("status") == 200)

    async def sweep(self, below: Position) -> int:
        """Delete documents older than `below`: rows the snapshot no longer had.

        Refused (ForeignIndex) for an index searchsync did not mark. Each delete
        carries `below` as its version, so a document a live change has meanwhile
        rewritten (with a newer version) is left alone.
        """
        client = self._require_client()
        removed = 0
        scroll_id = None
        with translated(f"sweeping index {self.config.index}"):
            foreign = await marks.unmarked(client, self.config.index)
            if foreign:
                raise marks.refusal(
                    f"remove the documents the copy did not contain from {self.config.index}",
                    self.config.index,
                    foreign,
                    "they may be another application's. The copy is written; nothing was removed",
                )
            await client.indices.refresh(index=self.config.index)
            response = await client.search(
                index=self.config.index,
                scroll="2m",
                body={"version": True, "_source": False, "size": 1000, "sort": ["_doc"]},
            )
            try:
                while True:
                    scroll_id = response.get("_scroll_id")
                    hits = response["hits"]["hits"]
                    if not hits:
                        break
                    stale = [
                        Change(Op.DELETE, h["_id"], (h["_id"],), below, 0.0)
                        for h in hits
                        if int(h.get("_version", below)) < below
                    ]
                    if stale:
                        results = await self.write(stale)
                        removed += sum(1 for r in results if r.status < 300)
                    response = await client.scroll(scroll_id=scroll_id, scroll="2m")
            finally:
                # Best effort: a scroll left open expires on its own after 2 minutes.
                if scroll_id:
                    with contextlib.suppress(SyncError), translated("clearing the scroll"):
                        await client.clear_scroll(scroll_id=scroll_id)
        return removed

    def _require_client(self) -> AsyncOpenSearch:
        if self._client is None:
            raise RuntimeError("sink is not open")
        return self._client

    @property
    def client(self) -> AsyncOpenSearch:
        """The open client, for a reader of the same index (`verified`)."""
        return self._require_client()


async def read_document(config: OpenSearchSinkConfig, doc_id: str) -> dict[str, Any] | None:
    """The document `doc_id` of `config.index` as OpenSearch returns it; None when absent.

    Never creates the index: when there is none, the SinkConfigError raised says 404
    `index_not_found_exception` (`answer_of`).
    """
    client = make_client(config)
    try:
        with translated(f"reading document {doc_id} from index {config.index}"):
            found: dict[str, Any] = await client.get(index=config.index, id=doc_id)
        return found
    except SinkConfigError as exc:
        answer = answer_of(exc)
        if answer.status == 404 and answer.error_type != INDEX_NOT_FOUND:
            return None  # the index is there; the document is not
        raise
    finally:
        await client.close()
