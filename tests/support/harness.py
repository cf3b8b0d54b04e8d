"""Run the real worker in a background thread and look at the real index."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from opensearchpy import OpenSearch

from syncer.models import Subscription
from syncer.runner import Runner


class WorkerThread:
    """`runsyncer` in-process: the same Runner, its own event loop, stoppable."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription] | None,
        shutdown_timeout: float = 30,
        dlq_retry_every: float | None = None,
    ):
        """Run these subscriptions (by name), or None: every one in the table, as it changes."""
        self.runner = Runner(subscriptions, shutdown_timeout, dlq_retry_every)
        self.result: bool | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> bool:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            return await self.runner.run(self._stop)

        try:
            self.result = asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    def start(self) -> WorkerThread:
        """Start, and return once the first subscriptions run (their pipelines exist)."""
        self._thread.start()
        self._ready.wait(10)
        deadline = time.monotonic() + 15
        while not self.runner.started and self.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60) -> bool | None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error:
            raise self.error
        return self.result

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}: {last!r}")


def index_docs(client: OpenSearch, index: str) -> dict[str, dict[str, Any]]:
    """Every document in `index`, by id (a scroll: osmem's _count reads every doc anyway)."""
    if not client.indices.exists(index=index):
        return {}
    client.indices.refresh(index=index)
    docs: dict[str, dict[str, Any]] = {}
    response = client.search(index=index, scroll="1m", body={"size": 2000, "sort": ["_doc"]})
    while response["hits"]["hits"]:
        for hit in response["hits"]["hits"]:
            docs[hit["_id"]] = hit["_source"]
        response = client.scroll(scroll_id=response["_scroll_id"], scroll="1m")
    client.clear_scroll(scroll_id=response["_scroll_id"])
    return docs


def checksum(rows: Iterable[tuple[Any, ...]]) -> str:
    """Order-independent digest of rows, to compare a table with its index."""
    digest = hashlib.sha256()
    for row in sorted(repr(tuple(r)) for r in rows):
        digest.update(row.encode())
    return digest.hexdigest()


def status_of(name: str) -> Subscription:
    return Subscription.objects.get(name=name)


ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`manage.py runsyncer` as a real process on the test database; stderr to a file."""

    def __init__(self, opensearch_url: str, log: Path, *args: str, **env: str) -> None:
        db = settings.DATABASES["default"]
        self.log = log
        environment = {
            **os.environ,
            "DATABASE_URL": f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "OPENSEARCH_URL": opensearch_url,
            "SYNCER_BACKOFF_BASE": "0.2",
            "SYNCER_BACKOFF_CAP": "2",
            "LOG_LEVEL": "INFO",
            **env,
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runsyncer", *args],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def kill(self) -> None:
        """kill -9: no flush, no clean-up; its session (and advisory locks) drop with it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)
