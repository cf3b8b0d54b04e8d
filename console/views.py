"""The live monitor page (`/console/`): staff who may view subscriptions, filled in live
by the browser.

The table is rendered from the Subscription rows so the page is useful before the
first snapshot arrives; the page's JavaScript then follows `/ws/monitor/` and one
subscription's `/ws/subscriptions/<name>/events/` (contract: syncer/live/messages.py).
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from console.model_permissions import VIEW_SUBSCRIPTION
from syncer.models import Subscription
from syncer.sources.kinds import format_position
from syncer.text import redact


def _row(sub: Any) -> dict[str, Any]:
    """One subscription as the page's JavaScript and template both read it."""
    return {
        "name": sub.name,
        "status": sub.status,
        "status_label": sub.get_status_display(),
        "message": redact(sub.status_message),
        "lag": sub.lag_seconds,
        "staleness": sub.staleness_seconds,
        "throughput": sub.throughput,
        "dead_letters": sub.dead_letter_count,
        "checkpoint": sub.checkpoint,
        "checkpoint_shown": (
            format_position(sub.source_kind, sub.checkpoint) if sub.checkpoint is not None else ""
        ),
        "index": sub.index_name,
        "paused": sub.paused,
        # The admin's dead-letter list filtered on this subscription; the page adds `q`.
        "dead_letters_url": (
            f"{reverse('admin:syncer_deadletter_changelist')}?subscription__id__exact={sub.pk}"
        ),
        "admin_url": reverse("admin:syncer_subscription_change", args=[sub.pk]),
    }


@staff_member_required
@permission_required(VIEW_SUBSCRIPTION, raise_exception=True)
def live_monitor(request: HttpRequest) -> HttpResponse:
    """Staff see the monitor (403 without the view permission, as its websockets refuse
    them); anyone else is sent to the admin login, then back here."""
    subscriptions = Subscription.objects.annotate(dead_letter_count=Count("dead_letters")).order_by(
        "name"
    )
    rows = [_row(sub) for sub in subscriptions]
    return render(
        request,
        "console/monitor.html",
        {
            "rows": rows,
            "monitor_config": {
                "subscriptions": rows,
                "monitorPath": "/ws/monitor/",
                "eventsPath": "/ws/subscriptions/{name}/events/",
                "tracePath": (
                    f"{reverse('admin:syncer_subscription_trace')}?subscription={{name}}&key={{id}}"
                ),
                "offlineAfter": 3.0,
                "chartSeconds": 300,
            },
            "title": "Live monitor",
        },
    )
