"""Per-document outcomes of a bulk write, and the rules that classify them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from syncer.engine.changes import Change, Op


class Outcome(enum.StrEnum):
    OK = "ok"
    STALE = "stale"
    """A newer version is already indexed: this write was applied before. Not an error."""
    TRANSIENT = "transient"
    """Worth retrying as is: overload, timeouts, a shard not ready."""
    PERMANENT = "permanent"
    """This document will fail the same way however often it is sent."""


@dataclass(frozen=True, slots=True)
class ItemResult:
    outcome: Outcome
    status: int
    error_type: str = ""
    reason: str = ""


_TRANSIENT_TYPES = frozenset(
    {
        "es_rejected_execution_exception",
        "opensearch_rejected_execution_exception",
        "rejected_execution_exception",
        "unavailable_shards_exception",
        "no_shard_available_action_exception",
        "cluster_block_exception",
        "process_cluster_event_timeout_exception",
        "timeout_exception",
        "circuit_breaking_exception",
        "node_not_connected_exception",
    }
)


def classify(op: Op, status: int, error_type: str = "") -> Outcome:
    """Classify one bulk item from its HTTP status and OpenSearch error type."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 404 and op is Op.DELETE:
        return Outcome.OK  # already absent: what a delete wants
    if status == 409 and error_type == "version_conflict_engine_exception":
        return Outcome.STALE
    if status in (408, 429) or status >= 500 or error_type in _TRANSIENT_TYPES:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


MAX_ID_BYTES = 512
"""OpenSearch's limit on a document `_id`: 512 bytes of UTF-8, not 512 characters."""
ID_TOO_LONG = "document_id_too_long"
INCOMPLETE_DOCUMENT = "unchanged_value_not_found"


def unwritable(change: Change) -> ItemResult | None:
    """Why `change` must never be sent to OpenSearch, as a permanent result; or None.

    An id over MAX_ID_BYTES would be refused (and could fail the whole bulk), and a
    document still missing unchanged TOAST values would overwrite the full one with a
    part of it.
    """
    size = len(change.doc_id.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return ItemResult(
            Outcome.PERMANENT,
            0,
            ID_TOO_LONG,
            f"the document id is {size:,} bytes of UTF-8 and OpenSearch takes at most "
            f"{MAX_ID_BYTES}: key the subscription on shorter columns",
        )
    if change.op is Op.UPSERT and change.missing:
        return ItemResult(Outcome.PERMANENT, 0, INCOMPLETE_DOCUMENT, incomplete_reason(change))
    return None


def incomplete_reason(change: Change) -> str:
    """What an operator reads about a change whose unchanged TOAST values were not found."""
    columns = sorted(change.missing)
    if len(columns) == 1:
        what = f"column {columns[0]} was unchanged and TOASTed; PostgreSQL did not send it and its"
    else:
        what = (
            f"columns {', '.join(columns)} were unchanged and TOASTed; PostgreSQL did not send "
            "them and their"
        )
    return (
        f"{what} current value could not be read (the document is not in the index and the "
        "row is not in the table), so the document was not written: resync the subscription "
        "or update the row"
    )
