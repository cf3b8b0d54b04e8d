"""Run the real worker in a background thread and look at the real index.

The worker as a real process is tests.support.process.WorkerProcess.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from opensearchpy import OpenSearch

from syncer.models import Subscription
from syncer.worker.runner import Runner


class WorkerThread:
    """`runsyncer` in-process: the same Runner, its own event loop, stoppable."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription] | None,
        shutdown_timeout: float = 30,
        dlq_retry_every: float | None = None,
    ):
        """Run these subscriptions (by name), or None: every one in the table, as it changes."""
        names = None if subscriptions is None else [sub.name for sub in subscriptions]
        self.runner = Runner(names, shutdown_timeout, dlq_retry_every)
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


def index_drift(client: OpenSearch, index: str, conn: psycopg.Connection, table: str) -> str:
    """How `index` differs from a table of (id, v) rows: ids missing, ghosts, stale."""
    rows: dict[int, Any] = dict(conn.execute(f"SELECT id, v FROM {table}").fetchall())
    docs = {int(k): d.get("v") for k, d in index_docs(client, index).items()}
    missing = sorted(set(rows) - set(docs))
    ghosts = sorted(set(docs) - set(rows))
    stale = sorted(k for k in set(rows) & set(docs) if rows[k] != docs[k])
    return ", ".join(
        f"{what} {ids[:20]} ({len(ids)})"
        for what, ids in (("missing", missing), ("ghosts", ghosts), ("stale", stale))
    )


def checksum(rows: Iterable[tuple[Any, ...]]) -> str:
    """Order-independent digest of rows, to compare a table with its index."""
    digest = hashlib.sha256()
    for row in sorted(repr(tuple(r)) for r in rows):
        digest.update(row.encode())
    return digest.hexdigest()


def status_of(name: str) -> Subscription:
    return Subscription.objects.get(name=name)


def settled_checkpoint(name: str, quiet: float = 1.0, timeout: float = 30) -> Any:
    """`name`'s saved checkpoint once it has stayed put for `quiet` seconds.

    A batch OpenSearch acknowledged has its checkpoint saved up to
    SYNCER_CHECKPOINT_INTERVAL later, so one read just after a write (or just as an
    outage begins) can still move without anything being wrong.
    """
    deadline = time.monotonic() + timeout
    checkpoint = status_of(name).checkpoint
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = status_of(name).checkpoint
        if now == checkpoint:
            return checkpoint
        checkpoint = now
    raise AssertionError(f"{name}'s checkpoint still moving after {timeout} s: {checkpoint}")


def table_rows(conn: psycopg.Connection, table: str) -> str:
    """The checksum of a table of (id, v) rows."""
    return checksum(conn.execute(f"SELECT id, v FROM {table}").fetchall())


def index_rows(client: OpenSearch, index: str) -> str:
    """The checksum of the (id, v) documents of `index`, to compare with `table_rows`."""
    return checksum((d["id"], d["v"]) for d in index_docs(client, index).values())


class Writer(threading.Thread):
    """Inserts, updates and deletes rows of (id int PRIMARY KEY, v int) tables until stopped.

    Each round is one transaction on the next of `tables` in turn: it inserts id
    `round + 1000`, bumps `v` of id `round % updated`, deletes id `round * 7 % deleted`,
    then sleeps `pause` seconds.
    """

    def __init__(
        self,
        dsn: str,
        tables: str | Sequence[str],
        updated: int = 500,
        deleted: int = 1000,
        pause: float = 0.002,
    ) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.tables = [tables] if isinstance(tables, str) else list(tables)
        self.updated, self.deleted, self.pause = updated, deleted, pause
        self.stopping = threading.Event()
        self.count = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                n = self.count
                table = self.tables[n % len(self.tables)]
                with conn.transaction():
                    conn.execute(f"INSERT INTO {table} VALUES (%s, 0)", (n + 1000,))
                    conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (n % self.updated,))
                    conn.execute(f"DELETE FROM {table} WHERE id = %s", (n * 7 % self.deleted,))
                self.count += 1
                time.sleep(self.pause)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class HostileWriter(threading.Thread):
    """Changes rows in and around the chunk being copied, as fast as it can.

    Each transaction picks ids near `near()` (the copy's position) half the time, anywhere
    in the table otherwise, and does one or more of: update a value, delete a row,
    insert (or re-insert a deleted) row, and change a row's key, to a free id on either
    side of the copy's position."""

    def __init__(
        self, dsn: str, table: str, near: Callable[[], int], top: int, pause: float = 0.0
    ) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table, self.near, self.top = dsn, table, near, top
        self.pause = pause
        self.stopping = threading.Event()
        self.count = 0
        self.keys_changed = 0
        self.random = random.Random(16)

    def _id(self) -> int:
        rnd = self.random
        if rnd.random() < 0.5:
            return max(1, self.near() + rnd.randint(-60, 60))
        return rnd.randint(1, self.top)

    def run(self) -> None:
        table = self.table
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                try:
                    with conn.transaction():
                        for _ in range(self.random.randint(1, 3)):
                            op, a = self.random.random(), self._id()
                            if op < 0.4:
                                conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (a,))
                            elif op < 0.6:
                                conn.execute(f"DELETE FROM {table} WHERE id = %s", (a,))
                            elif op < 0.8:
                                conn.execute(
                                    f"INSERT INTO {table} VALUES (%s, 0, 'again') "
                                    "ON CONFLICT (id) DO UPDATE SET v = excluded.v",
                                    (a,),
                                )
                            else:
                                b = self._id()
                                conn.execute(
                                    f"UPDATE {table} SET id = %s, pad = 'moved' WHERE id = %s "
                                    f"AND NOT EXISTS (SELECT 1 FROM {table} WHERE id = %s)",
                                    (b, a, b),
                                )
                                self.keys_changed += 1
                except psycopg.errors.UniqueViolation:
                    continue  # a concurrent insert took the id: the transaction is gone whole
                self.count += 1
                time.sleep(self.pause)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def log_events(log: Path, name: str) -> list[dict[str, Any]]:
    """The structured log lines of event `name` a worker process wrote to `log`."""
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            event = json.loads(line)
            if event.get("event") == name:
                events.append(event)
    return events
