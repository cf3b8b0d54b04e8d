"""A subscription's index as NDJSON: what `GET /api/subscriptions/{name}/documents/export`
and `manage.py export` stream.

Each line is one document as the index holds it, and the last line is always the
summary, so that a cut stream cannot pass for a whole one:

    {"id": "42", "version": 96637295176, "document": {"order_id": 42, ...}}
    ...
    {"summary": {"subscription": "orders", "documents": 2, "complete": true, ...}}

`complete` is false, with an `error`, when the read failed after the stream began
(OpenSearch gone, a PIT or scroll expired): the lines before it are documents, but not
every one. A failure before the first line (no index, OpenSearch unreachable) is raised
by `open_index_export`, so a caller can refuse the request instead. The read is
`syncer.sinks.opensearch.export`'s: one consistent view of the index (an alias too),
a page at a time, so memory stays flat whatever the index's size.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from syncer.errors import SyncError
from syncer.models import Subscription
from syncer.sinks.opensearch.client import INDEX_NOT_FOUND, answer_of
from syncer.sinks.opensearch.export import (
    PAGE_SIZE,
    Hit,
    ReadMethod,
    count_documents,
    index_pages,
)
from syncer.wiring import sink_config

log = structlog.get_logger(__name__)

NDJSON = "application/x-ndjson"


def dumps(value: Any) -> bytes:
    """`value` as one line of JSON: orjson's bytes, or the standard library's for what
    orjson refuses (an integer beyond 64 bits, a lone surrogate), which it keeps exact."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":")).encode()


def document_line(hit: Hit) -> bytes:
    return dumps({"id": hit.id, "version": hit.version, "document": hit.source}) + b"\n"


@dataclass
class IndexExport:
    """One export under way: `lines()` streams it; the counts grow as it goes."""

    subscription: str
    index: str
    _pages: AsyncGenerator[list[Hit], None]
    _first: list[Hit] | None
    method: ReadMethod = field(default_factory=ReadMethod)
    documents: int = 0
    complete: bool = False
    error: str = ""

    async def lines(self) -> AsyncIterator[bytes]:
        """The documents, a page of lines per chunk, then the summary line."""
        try:
            async with contextlib.aclosing(self._pages):
                page = self._first
                self._first = None
                while page is not None:
                    yield b"".join(document_line(hit) for hit in page)
                    self.documents += len(page)
                    page = await anext(self._pages, None)
            self.complete = True
        except SyncError as exc:
            self.error = f"{exc}; the export stopped after {self.documents} documents"
            log.warning(
                "index_export_failed",
                subscription=self.subscription,
                documents=self.documents,
                error=str(exc),
            )
        except Exception as exc:
            self.error = (
                f"the export stopped after {self.documents} documents on an unexpected "
                f"error ({type(exc).__name__}); the console's log has its traceback"
            )
            log.exception("index_export_crashed", subscription=self.subscription)
        yield self.summary_line()
        if self.complete:
            log.info(
                "index_exported",
                subscription=self.subscription,
                documents=self.documents,
                method=self.method.name,
            )

    def summary_line(self) -> bytes:
        summary: dict[str, Any] = {
            "subscription": self.subscription,
            "index": self.index,
            "documents": self.documents,
            "complete": self.complete,
            "read": self.method.name,
        }
        if self.error:
            summary["error"] = self.error
        return dumps({"summary": summary}) + b"\n"


async def open_index_export(
    subscription: Subscription, *, page_size: int = PAGE_SIZE
) -> IndexExport:
    """Begin reading the subscription's index; raise SyncError (`answer_of` tells what
    OpenSearch answered) when it cannot be read at all, before anything is streamed."""
    config = sink_config(subscription)
    method = ReadMethod()
    pages = index_pages(config, page_size=page_size, method=method)
    try:
        first = await anext(pages, None)
    except BaseException:
        await pages.aclose()
        raise
    return IndexExport(subscription.name, config.index, pages, first, method)


async def count_index(subscription: Subscription) -> int:
    """How many documents the subscription's index holds now (a progress bar's total)."""
    return await count_documents(sink_config(subscription))


def index_missing(error: SyncError) -> bool:
    """Whether `error` (from `open_index_export`) says the index does not exist."""
    return answer_of(error).error_type == INDEX_NOT_FOUND


def refusal(subscription: Subscription, error: SyncError) -> str:
    """Why the subscription's index cannot be exported, in an operator's words."""
    if index_missing(error):
        return (
            f"index {subscription.index_name!r} does not exist yet: the worker creates it "
            f"when subscription {subscription.name!r} starts"
        )
    return str(error)
