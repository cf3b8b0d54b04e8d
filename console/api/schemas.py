"""Request and response bodies of the API (they make the OpenAPI schema at /api/docs).

Subscription bodies have the shape of one entry of a subscriptions file; their values
are checked by `syncer.operations.declarations` (see declarations.py), so these schemas only say
the shape and the types.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

from syncer.models import DeadLetter, Subscription
from syncer.operations import dead_letters, describe
from syncer.sources.kinds import format_position
from syncer.text import redact

# The registry's kinds (syncer.sources.kinds.KINDS), spelled out for the OpenAPI schema;
# a unit test keeps the two equal.
SourceKind = Literal["postgres", "materialize", "push"]
Envelope = Literal["diff", "upsert"]
SnapshotMode = Literal["index", "discard"]


class _In(Schema):
    model_config = ConfigDict(extra="forbid")


# -- subscriptions in -------------------------------------------------------------------


class SourceIn(_In):
    kind: SourceKind
    dsn: str = Field(
        "", description="A PostgreSQL DSN or env:VARNAME; required but for push sources."
    )
    relation: str = Field(
        "",
        description="A table (postgres); a view or a query (materialize); none (push: "
        "documents are posted to /api/subscriptions/{name}/documents/stream).",
    )
    key: list[str] | None = Field(None, description="Key columns; default: the primary key.")
    cluster: str | None = Field(None, description="Materialize only.")
    envelope: Envelope | None = Field(None, description="Materialize only.")


_ADOPT = (
    "Let searchsync own an existing index it did not create: it marks the index, and may "
    "then sweep it at a resync or delete it at a swap to a new index. Default false: it "
    "writes into such an index but refuses to remove anything from it."
)


class IndexIn(_In):
    name: str
    settings: dict[str, Any] | None = None
    mappings: dict[str, Any] | None = None
    adopt: bool | None = Field(None, description=_ADOPT)


class BatchIn(_In):
    max_size: int | None = None
    max_age_ms: int | None = None


class BackpressureIn(_In):
    pause_at: int | None = None
    resume_at: int | None = None


class SubscriptionIn(_In):
    """One subscription, declared as in a subscriptions file."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "orders",
                    "source": {
                        "kind": "postgres",
                        "dsn": "env:SOURCE_DATABASE_URL",
                        "relation": "public.orders",
                    },
                    "index": {"name": "orders"},
                    "batch": {"max_size": 1000, "max_age_ms": 5000},
                }
            ]
        },
    )

    name: str
    enabled: bool | None = None
    source: SourceIn
    index: IndexIn
    snapshot: SnapshotMode | None = None
    batch: BatchIn | None = None
    backpressure: BackpressureIn | None = None


class SourcePatch(_In):
    kind: SourceKind | None = None
    dsn: str | None = None
    relation: str | None = None
    key: list[str] | None = None
    cluster: str | None = None
    envelope: Envelope | None = None


class IndexPatch(_In):
    name: str | None = None
    settings: dict[str, Any] | None = None
    mappings: dict[str, Any] | None = None
    adopt: bool | None = Field(None, description=_ADOPT)


class SubscriptionPatch(_In):
    """The fields to change; a null resets a field to its default. The name cannot change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"index": {"name": "orders-v2"}, "enabled": False}]},
    )

    enabled: bool | None = None
    source: SourcePatch | None = None
    index: IndexPatch | None = None
    snapshot: SnapshotMode | None = None
    batch: BatchIn | None = None
    backpressure: BackpressureIn | None = None


class ResyncIn(_In):
    mode: Literal["in_place", "new_index"] = Field(
        "in_place",
        description="in_place: copy into the existing index, then remove what the copy "
        "lacks; new_index: build a new index and swap the alias to it.",
    )


# -- subscriptions out ------------------------------------------------------------------


class SourceOut(Schema):
    kind: str
    dsn: str = Field(description="Shown with its password hidden.")
    relation: str
    key: list[str]
    cluster: str
    envelope: str


class IndexOut(Schema):
    name: str
    settings: dict[str, Any]
    mappings: dict[str, Any]
    adopt: bool = Field(description=_ADOPT)


class BatchOut(Schema):
    max_size: int
    max_age_ms: int


class BackpressureOut(Schema):
    pause_at: int
    resume_at: int


class CheckpointOut(Schema):
    position: int | None = Field(description="The source position, as stored.")
    shown: str = Field(description="As the source's tools show it, e.g. 16/B374D848.")
    at: datetime | None


class CopyProgressOut(Schema):
    rows: int = Field(description="Rows copied so far, every session's.")
    estimated_rows: int | None = Field(description="The planner's estimate of the table.")
    percent: float | None = Field(description="rows of estimated_rows, below 100 until done.")
    rows_per_second: float | None = Field(description="Over the last 30 s of this session.")
    eta_seconds: float | None = Field(description="Time left at that rate.")
    resumes: int = Field(description="Times the copy went on from its cursor after a restart.")


class LastVerificationOut(Schema):
    id: int
    finished_at: datetime
    failed: bool = Field(description="It could not run to its end (its job says why).")
    checked: int = Field(description="Rows and documents compared.")
    drifted: int = Field(description="Documents found missing, extra or differing.")
    repaired: int


class SubscriptionOut(Schema):
    name: str
    enabled: bool
    source: SourceOut
    index: IndexOut
    snapshot: str
    batch: BatchOut
    backpressure: BackpressureOut
    slot_name: str
    status: str
    status_message: str
    status_changed_at: datetime | None
    last_error: str
    last_error_at: datetime | None
    lag_seconds: float | None
    staleness_seconds: float | None
    throughput: float | None = Field(description="Changes per second over the last minute.")
    copy_progress: CopyProgressOut | None = Field(
        description="A resumable copy under way (a first copy, a resync, a lost slot's); "
        "null when none runs."
    )
    stats_at: datetime | None
    checkpoint: CheckpointOut
    snapshot_completed_at: datetime | None
    paused: bool
    resync_requested_at: datetime | None
    resync_mode: str
    reset_requested_at: datetime | None
    owner: str = Field(description="The worker running it; empty when none does.")
    dead_letters: int
    last_verification: LastVerificationOut | None = Field(
        description="The last verification that ended; null when none has "
        "(`/verifications` lists them)."
    )
    verifying: bool = Field(description="A verification runs now.")
    created_at: datetime
    updated_at: datetime


def subscription_out(
    s: Subscription, dead_letters: int, verified: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The read form of a subscription: DSN without password, worker texts redacted;
    `verified`: its entry of `verify.latest_by_subscription`, if any."""
    declared = describe.config(s)
    # The schema has every source field, whatever the kind.
    declared["source"].setdefault("cluster", s.source_cluster)
    declared["source"].setdefault("envelope", s.source_envelope)
    return {
        **declared,
        "slot_name": s.slot_name,
        "status": s.status,
        "status_message": redact(s.status_message),
        "status_changed_at": s.status_changed_at,
        "last_error": redact(s.last_error),
        "last_error_at": s.last_error_at,
        "lag_seconds": s.lag_seconds,
        "staleness_seconds": s.staleness_seconds,
        "throughput": s.throughput,
        "copy_progress": s.copy_progress,
        "stats_at": s.stats_at,
        "checkpoint": {
            "position": s.checkpoint,
            "shown": format_position(s.source_kind, s.checkpoint),
            "at": s.checkpoint_at,
        },
        "snapshot_completed_at": s.snapshot_completed_at,
        "paused": s.paused,
        "resync_requested_at": s.resync_requested_at,
        "resync_mode": s.resync_mode,
        "reset_requested_at": s.reset_requested_at,
        "owner": s.owner,
        "dead_letters": dead_letters,
        "last_verification": _last_verification(verified),
        "verifying": bool(verified and verified.get("running")),
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


class FieldChangeOut(Schema):
    field: str
    old: str
    new: str


class ChangedOut(Schema):
    subscription: SubscriptionOut
    changed: bool
    changes: list[FieldChangeOut] = Field(description="Values shown as `subscriptions apply` does.")


class DeletedOut(Schema):
    name: str
    deleted: bool
    warning: str | None = Field(description="What to clean up by hand, if anything.")


class ControlOut(Schema):
    subscription: str
    action: str
    changed: bool
    message: str
    paused: bool
    resync_requested_at: datetime | None
    resync_mode: str


# -- dead letters -----------------------------------------------------------------------


class DeadLetterSummary(Schema):
    id: int
    subscription: str
    doc_id: str
    action: str
    version: int
    attempts: int
    error_status: int | None
    error_type: str
    error_reason: str
    first_failed_at: datetime
    last_attempt_at: datetime


class DeadLetterOut(DeadLetterSummary):
    payload: Any = Field(description="The document exactly as it was sent (null for a delete).")


def dead_letter_out(entry: DeadLetter, payload: bool = False) -> dict[str, Any]:
    data = dead_letters.entry_fields(entry)
    if payload:
        data["payload"] = entry.payload
    return data


class DeadLetterPage(Schema):
    items: list[DeadLetterSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")


class StatsRowOut(Schema):
    subscription: str
    error_type: str
    count: int
    oldest: datetime
    newest: datetime


class StatsOut(Schema):
    total: int
    by_subscription: dict[str, int]
    by_error_type: list[StatsRowOut]
    oldest: DeadLetterSummary | None


class _Selection(_In):
    ids: list[int] | None = Field(None, max_length=10_000, description="These entries only.")
    subscription: str | None = Field(None, description="Only this subscription's entries.")
    older_than: str | None = Field(
        None, description="Only entries that last failed at least this long ago: 30m, 12h, 7d."
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="At most this many entries. One call touches at most SYNCER_API_DLQ_MAX "
        "(1000): a larger selection needs a limit, a narrower selection or `manage.py dlq`.",
    )
    dry_run: bool = Field(False, description="Say how many entries it would touch; do nothing.")


class RetryIn(_Selection):
    """Which entries to resubmit; criteria combine with AND, none means every entry."""


class PurgeIn(_Selection):
    """Which entries to delete; criteria combine with AND."""

    all: bool = Field(False, description="Needed to purge without ids, subscription or age.")


class RetryOut(Schema):
    dry_run: bool
    selected: int = Field(description="Entries the selection matched (up to the limit).")
    remaining: int = Field(
        description="Entries the selection matched beyond `limit`: a next call would find them."
    )
    retried: int
    succeeded: int
    superseded: int
    failed: int
    errors: dict[str, int] = Field(description="Entries that failed again, by error type.")
    message: str


def retry_outcome(report: dead_letters.RetryReport) -> dict[str, Any]:
    return {
        "retried": report.retried,
        "succeeded": report.succeeded,
        "superseded": report.superseded,
        "failed": report.failed,
        "errors": dict(report.errors),
        "message": str(report),
    }


class PurgeOut(Schema):
    dry_run: bool
    selected: int
    remaining: int = Field(
        description="Entries the selection matched beyond `limit`: a next call would find them."
    )
    purged: int
    message: str


# -- health ------------------------------------------------------------------------------


class HealthOut(Schema):
    status: Literal["ok"]


class ReadyOut(Schema):
    ready: bool
    reason: str = Field(description="Why not ready; empty when ready.")
    workers: int = Field(description="Workers with a heartbeat in the last 15 s.")


def _last_verification(verified: dict[str, Any] | None) -> dict[str, Any] | None:
    if not verified or "finished_at" not in verified:
        return None
    return {
        **{k: verified[k] for k in ("id", "failed", "checked", "drifted", "repaired")},
        "finished_at": datetime.fromtimestamp(verified["finished_at"], UTC),
    }
