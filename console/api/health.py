"""`/api/health` (the process answers) and `/api/ready` (it can do its job)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from django.db import DatabaseError
from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Status

from console.api.schemas import HealthOut, ReadyOut
from syncer.models import WorkerHeartbeat
from syncer.text import redact

log = structlog.get_logger(__name__)
router = Router(tags=["health"])

HEARTBEAT_FRESH = timedelta(seconds=15)


@router.get("/health", response=HealthOut, auth=None, summary="Process alive")
def health(request: HttpRequest) -> dict[str, Any]:
    """Always 200 while the process serves requests; no authentication."""
    return {"status": "ok"}


@router.get("/ready", response={200: ReadyOut, 503: ReadyOut}, summary="Ready to serve")
def ready(request: HttpRequest) -> Status[Any]:
    """200 when the database answers and a worker's heartbeat is under 15 s old; else 503."""
    now = timezone.now()
    try:
        fresh = WorkerHeartbeat.objects.filter(last_seen_at__gte=now - HEARTBEAT_FRESH).count()
        last = WorkerHeartbeat.objects.order_by("-last_seen_at").values_list(
            "last_seen_at", flat=True
        )[:1]
        latest = next(iter(last), None)
    except DatabaseError as exc:
        log.warning("api_not_ready", reason="database", error=str(exc))
        return Status(
            503,
            {"ready": False, "reason": f"database unreachable: {redact(str(exc))}", "workers": 0},
        )
    if fresh:
        return Status(200, {"ready": True, "reason": "", "workers": fresh})
    if latest is None:
        reason = "no worker has ever reported: start `manage.py runsyncer`"
    else:
        seconds = int((now - latest).total_seconds())
        reason = (
            f"no worker heartbeat in the last {int(HEARTBEAT_FRESH.total_seconds())} s "
            f"(the latest is {seconds} s old): is `manage.py runsyncer` running?"
        )
    return Status(503, {"ready": False, "reason": reason, "workers": 0})
