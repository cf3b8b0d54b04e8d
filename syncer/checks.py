"""Django system checks for the worker's settings (ids syncer.E001...)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def check_worker_settings(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not str(getattr(settings, "OPENSEARCH_URL", "")).startswith(("http://", "https://")):
        errors.append(
            Error(
                "OPENSEARCH_URL must be an http:// or https:// URL.",
                hint="Set OPENSEARCH_URL, e.g. http://127.0.0.1:9200.",
                id="syncer.E001",
            )
        )
    if float(getattr(settings, "SYNCER_POLL_INTERVAL", 0.1)) <= 0:
        errors.append(
            Error("SYNCER_POLL_INTERVAL must be positive.", hint="e.g. 0.1", id="syncer.E002")
        )
    if float(getattr(settings, "SYNCER_SHUTDOWN_TIMEOUT", 30)) <= 0:
        errors.append(
            Error("SYNCER_SHUTDOWN_TIMEOUT must be positive.", hint="e.g. 30", id="syncer.E003")
        )
    if getattr(settings, "LOG_FORMAT", "json") not in {"json", "console"}:
        errors.append(
            Error("LOG_FORMAT must be json or console.", hint="e.g. json", id="syncer.E004")
        )
    if int(getattr(settings, "SYNCER_MAX_ATTEMPTS", 3)) < 1:
        errors.append(
            Error("SYNCER_MAX_ATTEMPTS must be at least 1.", hint="e.g. 3", id="syncer.E005")
        )
    return errors
