"""Two `runsyncer` processes share the subscriptions; a survivor takes over a dead one's."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from syncer.models import Subscription, WorkerHeartbeat
from syncer.worker.ownership import NAMESPACE
from tests.support.harness import Writer, checksum, index_docs, status_of, wait_for
from tests.support.process import WorkerProcess

pytestmark = pytest.mark.usefixtures("fast_retries")

NAMES = ("alpha", "beta", "gamma", "delta")


def lock_holders() -> dict[int, list[str]]:
    """Subscription id -> application names of the sessions holding its advisory lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT l.objid, a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.granted",
            [NAMESPACE],
        )
        holders: dict[int, list[str]] = {}
        for objid, app in cursor.fetchall():
            holders.setdefault(int(objid), []).append(app)
    return holders


def owners() -> dict[str, str]:
    return dict(Subscription.objects.values_list("name", "owner"))


def test_two_workers_split_ownership_and_a_survivor_takes_over_after_kill_9(
    source_conn, source_dsn, table_name, make_subscription, search, opensearch_url, tmp_path
):
    tables = [f"{table_name}_{name}" for name in NAMES]
    subs = []
    for name, table in zip(NAMES, tables, strict=True):
        source_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        source_conn.execute(f"INSERT INTO {table} SELECT i, 0 FROM generate_series(0, 199) i")
        subs.append(make_subscription(name, table))
    first = WorkerProcess(opensearch_url, tmp_path / "first.log")
    second = WorkerProcess(opensearch_url, tmp_path / "second.log")
    writer = Writer(source_dsn, tables, updated=200, deleted=200, pause=0.005)
    survivor, survivor_id = first, ""
    try:
        wait_for(
            lambda: all(status_of(n).snapshot_completed_at for n in NAMES),
            timeout=90,
            what="every snapshot",
        )
        beats = wait_for(
            lambda: (
                list(WorkerHeartbeat.objects.all())
                if WorkerHeartbeat.objects.count() == 2
                else None
            ),
            timeout=10,
            what="two heartbeats",
        )
        # Each subscription is owned by exactly one worker, and says which.
        holders = lock_holders()
        for sub in subs:
            assert len(holders.get(sub.pk, [])) == 1, holders
            owner = status_of(sub.name).owner
            assert holders[sub.pk][0] == f"searchsync worker {owner}"[:63]
        wait_for(
            lambda: (
                sorted(n for b in WorkerHeartbeat.objects.all() for n in b.subscriptions)
                == sorted(NAMES)
            ),
            timeout=10,
            what="heartbeats naming every subscription once",
        )
        by_pid = {b.pid: b.worker_id for b in beats}
        assert set(by_pid) == {first.pid, second.pid}

        writer.start()
        wait_for(lambda: writer.count > 100, what="writes flowing")
        victim_id = status_of("alpha").owner
        victim, survivor = (first, second) if victim_id == by_pid[first.pid] else (second, first)
        survivor_id = by_pid[survivor.pid]
        victim.kill()
        killed_at = time.monotonic()
        wait_for(
            lambda: set(owners().values()) == {survivor_id},
            timeout=15,
            interval=0.1,
            what="the survivor owning every subscription",
        )
        took = time.monotonic() - killed_at
        assert took < 10, f"takeover took {took:.1f} s"
        holders = lock_holders()
        assert all(holders.get(sub.pk) == [holders[sub.pk][0]] for sub in subs), holders

        time.sleep(1)  # the survivor streams while the writer goes on
        writer.stop()
        for name, table in zip(NAMES, tables, strict=True):
            expected = checksum(source_conn.execute(f"SELECT id, v FROM {table}").fetchall())
            wait_for(
                lambda: (
                    checksum((d["id"], d["v"]) for d in index_docs(search, name).values())  # noqa: B023
                    == expected  # noqa: B023
                ),
                timeout=60,
                interval=1,
                what=f"{name}: index equal to table after the takeover",
            )
    finally:
        writer.stopping.set()
        codes = [worker.terminate() for worker in (first, second)]
    assert survivor_id and codes[[first, second].index(survivor)] == 0, survivor.output()
    assert not WorkerHeartbeat.objects.filter(worker_id=survivor_id).exists()
    assert set(owners().values()) == {""}
