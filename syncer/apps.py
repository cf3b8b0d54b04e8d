"""Django app configuration for the syncer."""

from __future__ import annotations

from django.apps import AppConfig


class SyncerConfig(AppConfig):
    name = "syncer"
    verbose_name = "Sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from syncer import checks  # noqa: F401  (registers the system checks)
        from syncer.logconfig import configure_structlog

        configure_structlog()
