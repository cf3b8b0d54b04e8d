"""URL routes of the console."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import path, re_path

from console import views
from console.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("console/", views.live_monitor, name="console-monitor"),
    # daphne serves no static files by itself: the admin's and the monitor's (vendored,
    # no CDN) come from the apps' static folders, as `runserver` would serve them.
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
]
