"""Per-document outcomes of a bulk write, and the rules that classify them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from syncer.engine.changes import Op


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
