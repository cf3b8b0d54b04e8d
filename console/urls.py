"""URL routes of the console."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from console import views
from console.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("console/", views.live_monitor, name="console-monitor"),
]
