"""Websocket routes of the live monitor (mounted by console.asgi)."""

from __future__ import annotations

from django.urls import path

from console.live.consumers import MonitorConsumer, SubscriptionEventsConsumer
from console.live.live_subscriptions import LiveSubscriptionsConsumer

websocket_urlpatterns = [
    path("ws/monitor/", MonitorConsumer.as_asgi()),
    path("ws/subscriptions/<str:name>/events/", SubscriptionEventsConsumer.as_asgi()),
    path("ws/live/", LiveSubscriptionsConsumer.as_asgi()),
]
