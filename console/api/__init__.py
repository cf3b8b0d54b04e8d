"""The REST API (django-ninja), mounted at /api/ with its OpenAPI schema at /api/docs.

Automation does what the admin does: subscriptions, their control, the dead-letter
queue, health and readiness. Every endpoint but /api/health needs a staff session or
an API token (see auth.py), and the permission it states (permissions.py); so do the
docs and the schema (docs.py).
"""

from __future__ import annotations

from ninja import NinjaAPI

from console.api import (
    dead_letters,
    documents,
    errors,
    events,
    health,
    live_subscriptions,
    push,
    subscriptions,
    trace,
    verifications,
)
from console.api.auth import authenticators
from console.api.docs import docs_login_required

api = NinjaAPI(
    title="searchsync",
    version="1",
    description="Subscriptions, their control, the dead-letter queue, live subscriptions "
    "(filtered feeds of a subscription's changes), health and readiness. "
    "Authenticate with `Authorization: Bearer <API token>` (created in the admin or with "
    "`manage.py createapitoken`), or a staff session with its CSRF token. A subscription's "
    "live events are also served as server-sent events at "
    "`/api/subscriptions/{name}/events/stream` (not listed below: an endless stream).",
    auth=authenticators(),
    urls_namespace="api",
    docs_decorator=docs_login_required,
)
errors.install(api)
api.add_router("/subscriptions", subscriptions.router)
# Before documents: its `documents/{id}` would take `documents/stream` (push.py serves
# the GET of a document called "stream" too).
api.add_router("/subscriptions", push.router)
api.add_router("/subscriptions", documents.router)
api.add_router("/subscriptions", trace.router)
api.add_router("/subscriptions", verifications.router)
api.add_router("/dlq", dead_letters.router)
api.add_router("/live-subscriptions", live_subscriptions.router)
api.add_router("", health.router)
api.add_router("", events.router)
api.add_router("", errors.unknown_endpoints)
