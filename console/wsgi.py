"""WSGI entry point (the ASGI one for the live monitor comes with the console)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
application = get_wsgi_application()

from syncer.checks import require_secret_key  # noqa: E402

require_secret_key("the web process (console.wsgi)")
