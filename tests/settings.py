"""Settings of the test run: console.settings with a key of its own.

Set in the environment before console.settings reads it, so the processes the tests
start (daphne, runsyncer, manage.py) inherit it too; with DEBUG off they refuse to
start without one (syncer.E006). The same goes for each pytest-xdist worker's Redis.
"""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "searchsync-tests-only-" + "k" * 40)

# Under pytest-xdist each worker (gw0, gw1, ...) gets a Redis database of its own, so the
# live monitor's groups, counters and stream slots of one worker's tests never reach
# another's; set before console.settings reads it, so subprocesses inherit it too.
# Only in the worker itself: a process it starts keeps the REDIS_URL it was given (the
# browser tests give daphne and runsyncer a redis-server of their own).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and os.environ.get("SEARCHSYNC_TEST_REDIS_FOR") != _WORKER:
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{1 + int(_WORKER[2:]) % 15}"
    os.environ["SEARCHSYNC_TEST_REDIS_FOR"] = _WORKER

from console.settings import *  # noqa: E402, F403
