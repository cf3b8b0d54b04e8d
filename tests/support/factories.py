"""Rows for tests: a subscription and its dead letters, and what the admin's form posts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from syncer.models import DeadLetter, Subscription


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
