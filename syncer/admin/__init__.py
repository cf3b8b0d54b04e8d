"""The Django admin of searchsync: one module per model admin.

Django's autodiscovery imports `syncer.admin`; importing the modules here registers them.
Every action calls `syncer.operations`, as the API and the commands do.
"""

from syncer.admin import (  # noqa: F401  (registers the admins)
    dead_letters,
    live_subscriptions,
    subscriptions,
)
