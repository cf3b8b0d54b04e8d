"""Rows for tests of the dead-letter queue: a subscription and its entries."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from syncer.models import DeadLetter, Subscription


def subscription(name: str = "orders") -> Subscription:
    return Subscription.objects.create(
        name=name, source_dsn="postgresql://u@h/db", relation="public.orders", index_name=name
    )


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
