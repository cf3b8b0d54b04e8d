"""The /console/ page as Django renders it, before any websocket message."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from syncer.models import DeadLetter, Subscription

pytestmark = pytest.mark.django_db


def test_the_monitor_sends_anonymous_and_non_staff_users_to_the_admin_login(
    client: Client,
) -> None:
    response = client.get("/console/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/console/"
    user = get_user_model().objects.create_user("reader", password="reader-password")
    client.force_login(user)
    response = client.get("/console/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_monitor_renders_each_subscription_from_its_row_for_staff(
    admin_client: Client,
) -> None:
    from django.utils import timezone

    sub = Subscription.objects.create(
        name="orders",
        relation="public.orders",
        index_name="orders-index",
        status=Subscription.Status.SINK_UNAVAILABLE,
        status_message="OpenSearch unavailable",
        lag_seconds=12.34,
        staleness_seconds=3.0,
        throughput=45.6,
        checkpoint=0x16B3748,
    )
    now = timezone.now()
    DeadLetter.objects.create(
        subscription=sub,
        doc_id="7",
        action="index",
        version=1,
        first_failed_at=now,
        last_attempt_at=now,
    )
    response = admin_client.get("/console/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-subscription="orders"' in html
    assert 'data-status="sink_unavailable"' in html
    assert "12.3 s" in html
    assert "45.6/s" in html
    assert "0/16B3748" in html
    # Only the worker knows its live subscriptions: unknown until its first snapshot.
    assert '<td class="num" data-field="live_subscriptions">\N{EN DASH}</td>' in html
    assert f"/admin/syncer/deadletter/?subscription__id__exact={sub.pk}" in html
    config: dict[str, Any] = response.context["monitor_config"]
    assert config["subscriptions"][0]["dead_letters"] == 1
    assert config["monitorPath"] == "/ws/monitor/"
    # Served by the project itself (no CDN): the vendored chart library and the page's script.
    for asset in ("/static/console/vendor/uplot/uPlot.iife.min.js", "/static/console/monitor.js"):
        assert asset in html
        served = admin_client.get(asset)
        assert served.status_code == 200
        assert b"".join(served.streaming_content)  # type: ignore[attr-defined]
        served.close()
