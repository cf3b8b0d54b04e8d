"""OpenSearch sink: versioned `_bulk` writes, index creation, outcome classification.

Every write carries the source position as an external version, so OpenSearch itself
refuses a write older than what it holds (409, counted as stale). The index it creates
carries searchsync's mark (`index_marks`); it writes into an existing index it did not
create, but sweeps only one it created or that the subscription adopts. Whole-request
failures raise SinkUnavailable or SinkConfigError; per-document failures come back
as `ItemResult`s. Only the public REST API is used, so this runs unchanged against
OpenSearch 2.x and 3.x.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from opensearchpy import AsyncOpenSearch
from opensearchpy import exceptions as os_errors

from syncer.engine.changes import Change, Document, Op, Position
from syncer.engine.outcomes import ItemResult, classify
from syncer.errors import RequestTooLarge, SinkConfigError, SinkUnavailable
from syncer.logconfig import redact
from syncer.sinks.opensearch import marks

log = structlog.get_logger(__name__)

_REASON_LIMIT = 2000


@dataclass(frozen=True)
class OpenSearchSinkConfig:
    name: str
    index: str
    url: str
    settings: dict[str, Any] = field(default_factory=dict)
    mappings: dict[str, Any] = field(default_factory=dict)
    user: str = ""
    password: str = ""
    ca_certs: str = ""
    verify_certs: bool = True
    timeout: float = 30.0
    adopt_index: bool = False
    """Own the index even though searchsync did not create it: mark it, sweep it."""


def make_client(config: OpenSearchSinkConfig) -> AsyncOpenSearch:
    options: dict[str, Any] = {"timeout": config.timeout, "max_retries": 0}
    if config.user:
        options["http_auth"] = (config.user, config.password)
    if config.url.startswith("https://"):
        options["verify_certs"] = config.verify_certs
        if config.ca_certs:
            options["ca_certs"] = config.ca_certs
    return AsyncOpenSearch(hosts=[config.url], **options)


class OpenSearchSink:
    """Writes one subscription's documents into its index."""

    def __init__(self, config: OpenSearchSinkConfig) -> None:
        self.config = config
        self._client: AsyncOpenSearch | None = None
        self._log = log.bind(subscription=config.name, index=config.index)

    async def open(self) -> None:
        self._client = make_client(self.config)
        with _translated(f"checking index {self.config.index}"):
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
            with _translated(f"creating index {self.config.index}"):
                await self._client.indices.create(index=self.config.index, body=body)
            self._log.info("index_created")
        except SinkConfigError as exc:
            # Another worker may have created it between the check and now.
            if "resource_already_exists_exception" not in str(exc):
                raise

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        if not changes:
            return []
        client = self._require_client()
        with _translated(f"writing to index {self.config.index}"):
            response = await client.bulk(body=self._payload(changes))
        results = []
        for change, item in zip(changes, response["items"], strict=True):
            (outcome,) = item.values()
            status = int(outcome.get("status", 500))
            error = outcome.get("error") or {}
            error_type = str(error.get("type", "")) if isinstance(error, dict) else ""
            reason = _reason(error)
            results.append(
                ItemResult(classify(change.op, status, error_type), status, error_type, reason)
            )
        return results

    def _payload(self, changes: Sequence[Change]) -> bytes:
        lines: list[bytes] = []
        index = self.config.index
        for change in changes:
            meta = {
                "_index": index,
                "_id": change.doc_id,
                "version": change.version,
                "version_type": "external",
            }
            if change.op is Op.DELETE:
                lines.append(orjson.dumps({"delete": meta}))
            else:
                lines.append(orjson.dumps({"index": meta}))
                lines.append(orjson.dumps(change.doc, option=orjson.OPT_NON_STR_KEYS))
        lines.append(b"")
        return b"\n".join(lines)

    async def fetch(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        if not doc_ids:
            return {}
        client = self._require_client()
        with _translated(f"reading from index {self.config.index}"):
            response = await client.mget(index=self.config.index, body={"ids": list(doc_ids)})
        return {d["_id"]: d["_source"] for d in response["docs"] if d.get("found")}

    async def sweep(self, below: Position) -> int:
        """Delete documents older than `below`: rows the snapshot no longer had.

        Refused (ForeignIndex) for an index searchsync did not mark. Each delete
        carries `below` as its version, so a document a live change has meanwhile
        rewritten (with a newer version) is left alone.
        """
        client = self._require_client()
        removed = 0
        scroll_id = None
        with _translated(f"sweeping index {self.config.index}"):
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
                if scroll_id:
                    try:
                        await client.clear_scroll(scroll_id=scroll_id)
                    except os_errors.OpenSearchException:
                        pass
        return removed

    def _require_client(self) -> AsyncOpenSearch:
        if self._client is None:
            raise RuntimeError("sink is not open")
        return self._client


def _reason(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        text = str(error.get("reason", ""))
        caused = error.get("caused_by")
        if isinstance(caused, dict) and caused.get("reason") and caused["reason"] != text:
            text = f"{text} (caused by: {caused['reason']})"
    else:
        text = str(error)
    return text[:_REASON_LIMIT]


def _error_summary(exc: os_errors.TransportError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error", exc.error)
    if isinstance(error, dict):
        return f"{error.get('type', '')}: {_reason(error)}"
    return str(error)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Re-raise opensearch-py errors as SinkUnavailable / SinkConfigError."""
    try:
        yield
    except (os_errors.ConnectionError, os_errors.ConnectionTimeout) as exc:
        raise SinkUnavailable(
            f"{action}: cannot reach OpenSearch ({redact(str(exc.error))})"
        ) from exc
    except os_errors.TransportError as exc:
        status = exc.status_code if isinstance(exc.status_code, int) else 0
        summary = redact(_error_summary(exc))
        if status in (401, 403):
            raise SinkConfigError(
                f"{action}: OpenSearch refused the credentials ({status} {summary}); "
                "check OPENSEARCH_USER / OPENSEARCH_PASSWORD and the user's permissions"
            ) from exc
        if status == 413:
            raise RequestTooLarge(f"{action}: OpenSearch refused the request as too large") from exc
        if status in (408, 429) or status >= 500 or status == 0:
            raise SinkUnavailable(f"{action}: OpenSearch answered {status} {summary}") from exc
        raise SinkConfigError(f"{action}: OpenSearch refused it ({status} {summary})") from exc
    except OSError as exc:
        raise SinkUnavailable(f"{action}: cannot reach OpenSearch ({exc})") from exc
