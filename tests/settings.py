"""Settings of the test run: console.settings with a key of its own.

Set in the environment before console.settings reads it, so the processes the tests
start (daphne, runsyncer, manage.py) inherit it too; with DEBUG off they refuse to
start without one (syncer.E006).
"""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "searchsync-tests-only-" + "k" * 40)

from console.settings import *  # noqa: F403
