"""Rows for tests: a subscription and its dead letters, what the admin's form posts, and
the worker's live-monitor snapshot of a subscription."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from django.utils import timezone
from opensearchpy import OpenSearch

from syncer.live.messages import SnapshotMessage
from syncer.models import DeadLetter, Subscription

TOTAL_IS_INTEGER = {"mappings": {"properties": {"total": {"type": "integer"}}}}


def subscription(name: str = "orders", **fields: Any) -> Subscription:
    """A postgres subscription of public.orders into index `name`, with `fields` on top."""
    fields.setdefault("source_dsn", "postgresql://u@h/db")
    fields.setdefault("relation", "public.orders")
    fields.setdefault("index_name", name)
    return Subscription.objects.create(name=name, **fields)


def entry(
    sub: Subscription,
    doc_id: str,
    *,
    payload: Any = None,
    action: str = "index",
    version: int = 100,
    age: dt.timedelta = dt.timedelta(minutes=5),
    error_type: str = "mapper_parsing_exception",
    error_reason: str = "failed to parse field [total] of type [integer]",
    attempts: int = 1,
) -> DeadLetter:
    failed_at = timezone.now() - age
    return DeadLetter.objects.create(
        subscription=sub,
        doc_id=doc_id,
        action=action,
        payload={"total": 1} if payload is None and action == "index" else payload,
        version=version,
        attempts=attempts,
        error_status=400,
        error_type=error_type,
        error_reason=error_reason,
        first_failed_at=failed_at,
        last_attempt_at=failed_at,
    )


def admin_form(**fields: str) -> dict[str, str]:
    """What a browser posts to the admin's subscription form: a postgres subscription
    `orders` with every default, live checks skipped, and `fields` on top."""
    data = {
        "name": "orders",
        "enabled": "on",
        "source_kind": "postgres",
        "source_dsn": "postgresql://u@h/db",
        "relation": "public.orders",
        "key_columns": "",
        "source_cluster": "",
        "source_envelope": "diff",
        "index_name": "orders",
        "index_settings": "{}",
        "index_mappings": "{}",
        "snapshot_mode": "index",
        "batch_max_size": "1000",
        "batch_max_age_ms": "5000",
        "backpressure_pause_at": "5000",
        "backpressure_resume_at": "2500",
        "skip_live_checks": "on",
        "_save": "Save",
    }
    data.update(fields)
    return data


class RetryCase(NamedTuple):
    """Dead letters of `orders` whose retry meets each outcome OpenSearch can give."""

    valid: DeadLetter  # indexed
    older: DeadLetter  # stale: the index holds version 200 of doc 2
    broken: DeadLetter  # refused again by the integer mapping
    untouched: DeadLetter  # not selected


def retry_case(search: OpenSearch, sub: Subscription) -> RetryCase:
    """An `orders` index with `total` an integer, doc 2 at version 200, and four entries."""
    search.indices.create(index="orders", body=TOTAL_IS_INTEGER)
    search.index(index="orders", id="2", body={"total": 99}, version=200, version_type="external")
    return RetryCase(
        valid=entry(sub, "1", payload={"total": 5}, version=100),
        older=entry(sub, "2", payload={"total": 6}, version=150),
        broken=entry(sub, "3", payload={"total": "not a number"}, version=100, attempts=2),
        untouched=entry(sub, "4", payload={"total": 7}),
    )


def snapshot_message(name: str = "orders", message: str = "", **fields: Any) -> SnapshotMessage:
    """A `sync.snapshot` of subscription `name` as the worker publishes it."""
    snapshot = SnapshotMessage(
        type="sync.snapshot",
        subscription=name,
        worker="host:1",
        status="caught_up",
        message=message,
        lag=0.0,
        staleness=0.1,
        buffer=0,
        backpressure=False,
        throughput=0.0,
        dead_letters=0,
        live_subscriptions=0,
        checkpoint=None,
        checkpoint_shown="",
        copy=None,
        verification=None,
        at=1_700_000_000.0,
    )
    snapshot.update(fields)  # type: ignore[typeddict-item]
    return snapshot
