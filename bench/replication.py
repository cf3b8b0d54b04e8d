"""Peek polling against the replication stream on the same WAL (docs/replication.md).

    .venv/bin/python bench/replication.py [--changes 100000] [--per-commit 100]
                                          [--latency-commits 100]

On a fresh database, one table, three slots made before any write (so each has the
same WAL to decode), then `--changes` inserted rows in transactions of `--per-commit`:

- PostgreSQL alone (`bench/decoding.py`'s probe, as bench/ceiling.py uses it): one
  `pg_logical_slot_peek_binary_changes` of it all (`peek_once`), then `pg_recvlogical`
  timed from its first byte, nothing decoded in Python: the ceiling.

Then each reader takes every change from its own slot, decoding each pgoutput message
with `syncer.sources.postgres.pgoutput.decode` as the source does:

- `peek`: the PostgreSQL source as it was until issue 15: `pg_logical_slot_peek_binary_changes`
  in pages of 1,000 changes, each page acknowledged (`pg_replication_slot_advance`) before
  the next peek, which is the peek loop's best case (it re-decodes nothing);
- `stream`: `syncer.sources.postgres.stream.ReplicationStream`, confirming every 1,000.

For each: changes/s over the wall time, this process's CPU and the server backend's CPU
(the SQL session's for `peek`, the walsender's for `stream`) per 1,000 changes.
Then latency: `--latency-commits` single-row commits, 20 a second, each timed from its
commit to its arrival in the reader: `peek` polling every 100 ms (the old
SYNCER_POLL_INTERVAL) against `stream` waking on the socket. Last, the fan-out:
`--fanout` subscriptions on empty tables, streamed and idle as a caught-up pipeline
reads, their walsenders' CPU over 10 idle seconds and then while another table takes
`--changes` rows (every walsender decodes all of a database's WAL, whatever its
publication holds), until each slot has moved past it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.decoding import DecodingProbe  # noqa: E402
from bench.procfs import pid_cpu  # noqa: E402
from bench.run import ADMIN_DSN, dsn_for, machine_note, percentile, say  # noqa: E402
from syncer.sources.positions import format_lsn  # noqa: E402
from syncer.sources.postgres import pgoutput  # noqa: E402
from syncer.sources.postgres.stream import ReplicationStream  # noqa: E402

DATABASE = "bench_replication" + os.environ.get("BENCH_DB_SUFFIX", "")
PUBLICATION = "bench_pub"
PAGE = 1000
PEEK = (
    "SELECT pg_wal_lsn_diff(lsn, '0/0')::bigint, data FROM pg_logical_slot_peek_binary_changes("
    "%s, NULL, %s, 'proto_version', '1', 'publication_names', %s)"
)


def setup(conn: psycopg.Connection, slots: list[str]) -> None:
    conn.execute("CREATE TABLE bench (id int PRIMARY KEY, name text, price numeric, tags text[])")
    conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE bench")
    for slot in slots:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def advance(conn: psycopg.Connection, slot: str, end: int) -> None:
    """Acknowledge to a peeked slot, as the peek loop did."""
    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(end)))


def write(conn: psycopg.Connection, changes: int, per_commit: int, start: int = 0) -> None:
    for first in range(start, start + changes, per_commit):
        conn.execute(
            "INSERT INTO bench SELECT g, 'product ' || g, g * 1.5, ARRAY['a', 'b'] "
            "FROM generate_series(%s::int, %s::int) g",
            (first, first + per_commit - 1),
        )


def peek_all(dsn: str, slot: str, changes: int) -> tuple[int, float]:
    """(changes taken, the SQL session's CPU seconds)."""
    taken = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        server_started = pid_cpu(int(row[0]))
        while taken < changes:
            rows = conn.execute(PEEK, (slot, PAGE, PUBLICATION)).fetchall()
            end = 0
            for _, data in rows:
                message = pgoutput.decode(bytes(data))
                if isinstance(message, pgoutput.Insert):
                    taken += 1
                elif isinstance(message, pgoutput.Commit):
                    end = message.end_lsn
            advance(conn, slot, end)
        return taken, pid_cpu(int(row[0])) - server_started


async def stream_all(dsn: str, slot: str, changes: int) -> tuple[int, float]:
    """(changes taken, the walsender's CPU seconds)."""
    stream = ReplicationStream(dsn, slot, PUBLICATION)
    await stream.start(0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    assert row is not None
    walsender = int(row[0])
    taken = since = 0
    try:
        while taken < changes:
            payloads = stream.read(PAGE)
            if not payloads:
                await stream.wait(1.0)
            for payload in payloads:
                message = pgoutput.decode(payload)
                if isinstance(message, pgoutput.Insert):
                    taken += 1
                    since += 1
                elif isinstance(message, pgoutput.Commit) and since >= PAGE:
                    stream.confirm(message.end_lsn, message.end_lsn)
                    since = 0
        return taken, pid_cpu(walsender)  # it started with this stream
    finally:
        stream.close()


def measure(run: Callable[[], tuple[int, float]], changes: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    taken, server = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert taken == changes, f"took {taken} of {changes} changes"
    return {
        "changes_per_s": changes / wall,
        "client_cpu_ms_per_1000": cpu * 1e6 / changes,
        "server_cpu_ms_per_1000": server * 1e6 / changes,
    }


def latency(dsn: str, commits: int, reader: str) -> list[float]:
    """Commit → arrival for single-row commits at 20/s, read by `reader`."""
    slot = f"bench_latency_{reader}"
    arrived: list[float] = []
    committed: dict[int, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        base = 10_000_000 if reader == "peek" else 20_000_000
        done = threading.Event()

        def writer() -> None:
            with psycopg.connect(dsn, autocommit=True) as w:
                for i in range(commits):
                    w.execute("INSERT INTO bench VALUES (%s, 'x', 1, '{}')", (base + i,))
                    committed[base + i] = time.perf_counter()
                    time.sleep(0.05)
            done.set()

        def note(message: pgoutput.Message) -> None:
            if isinstance(message, pgoutput.Insert):
                arrived.append(time.perf_counter())

        thread = threading.Thread(target=writer)
        if reader == "peek":
            thread.start()
            while len(arrived) < commits:
                end = 0
                for _, data in conn.execute(PEEK, (slot, PAGE, PUBLICATION)).fetchall():
                    message = pgoutput.decode(bytes(data))
                    note(message)
                    if isinstance(message, pgoutput.Commit):
                        end = message.end_lsn
                if end:
                    advance(conn, slot, end)
                time.sleep(0.1)
        else:

            async def read() -> None:
                stream = ReplicationStream(dsn, slot, PUBLICATION)
                await stream.start(0)
                thread.start()
                try:
                    while len(arrived) < commits:
                        payloads = stream.read(PAGE)
                        if not payloads:
                            await stream.wait(1.0)
                        for payload in payloads:
                            message = pgoutput.decode(payload)
                            note(message)
                            if isinstance(message, pgoutput.Commit):
                                stream.confirm(message.end_lsn, message.end_lsn)
                finally:
                    stream.close()

            asyncio.run(read())
        thread.join()
        time.sleep(0.5)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    commit_times = [committed[k] for k in sorted(committed)]
    return [(a - c) * 1000 for a, c in zip(arrived, commit_times, strict=True)]


async def fanout(dsn: str, count: int, changes: int) -> dict[str, float]:
    """What `count` idle subscriptions' walsenders cost the server: idle, and while
    another table takes `changes` rows (every walsender decodes all the WAL)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(count):
            conn.execute(f"CREATE TABLE fan_{i} (id int PRIMARY KEY)")
            conn.execute(f"CREATE PUBLICATION fan_pub_{i} FOR TABLE fan_{i}")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"fan_{i}",))
        streams = [ReplicationStream(dsn, f"fan_{i}", f"fan_pub_{i}") for i in range(count)]
        for stream in streams:
            await stream.start(0)
        stop = asyncio.Event()

        async def idle(stream: ReplicationStream) -> None:  # as an idle pipeline reads
            while not stop.is_set():
                assert stream.read(PAGE) == []
                await stream.wait(0.5)

        readers = [asyncio.create_task(idle(stream)) for stream in streams]
        try:
            pids = [
                int(pid)
                for (pid,) in conn.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name LIKE 'fan_%'"
                )
            ]
            assert len(pids) == count
            await asyncio.sleep(2)
            cpu, started = sum(map(pid_cpu, pids)), time.perf_counter()
            await asyncio.sleep(10)
            idle_share = (sum(map(pid_cpu, pids)) - cpu) / (time.perf_counter() - started)
            cpu = sum(map(pid_cpu, pids))
            with psycopg.connect(dsn, autocommit=True) as writer:
                await asyncio.to_thread(write, writer, changes, 100, 5_000_000)
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint"
            ).fetchone()
            assert row is not None
            deadline = time.monotonic() + 300
            query = (
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'fan_%%' "
                "AND pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') >= %s"
            )
            while conn.execute(query, (row[0],)).fetchone() != (count,):
                assert time.monotonic() < deadline, "the idle slots did not move past the WAL"
                await asyncio.sleep(0.5)
            decoded = sum(map(pid_cpu, pids)) - cpu
        finally:
            stop.set()
            await asyncio.gather(*readers, return_exceptions=True)
            for stream in streams:
                stream.close()
    return {
        "idle_cpu_pct_per_walsender": idle_share / count * 100,
        "other_table_cpu_ms_per_1000_per_walsender": decoded * 1e6 / changes / count,
    }


def drop_database() -> None:
    """The bench's database and its slots (which would keep WAL), if left."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s",
            (DATABASE,),
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--per-commit", type=int, default=100)
    parser.add_argument("--latency-commits", type=int, default=100)
    parser.add_argument(
        "--fanout", type=int, default=20, help="idle subscriptions whose walsenders are timed"
    )
    args = parser.parse_args(argv)
    dsn = dsn_for(DATABASE)
    drop_database()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    results: dict[str, Any] = {"machine": machine_note()}
    try:
        probe = DecodingProbe(dsn, "bench", "bench_recv")  # PostgreSQL's own decoding
        with psycopg.connect(dsn, autocommit=True) as conn:
            setup(conn, ["bench_peek", "bench_stream"])
            probe.open()
            say(f"writing {args.changes:,} rows in commits of {args.per_commit}")
            write(conn, args.changes, args.per_commit)
        probe.mark_end()
        say("PostgreSQL alone: one peek of it all, then pg_recvlogical from its first byte")
        decoded = probe.measure(args.changes)
        probe.close()
        results["pg_recvlogical"] = {"changes_per_s": decoded["recvlogical_changes_per_s"]}
        results["peek_once"] = {"changes_per_s": decoded["peek_changes_per_s"]}
        say("peek, in pages of 1,000")
        results["peek"] = measure(lambda: peek_all(dsn, "bench_peek", args.changes), args.changes)
        say("stream")
        results["stream"] = measure(
            lambda: asyncio.run(stream_all(dsn, "bench_stream", args.changes)), args.changes
        )
        for reader in ("peek", "stream"):
            say(f"latency, {reader}")
            ms = latency(dsn, args.latency_commits, reader)
            results[f"latency_{reader}"] = {
                "p50_ms": statistics.median(ms),
                "p99_ms": percentile(sorted(ms), 99),
                "max_ms": max(ms),
            }
        say(f"{args.fanout} idle walsenders while another table takes {args.changes:,} rows")
        results["fanout"] = asyncio.run(fanout(dsn, args.fanout, args.changes))
    finally:
        drop_database()
    ceiling = results["pg_recvlogical"]["changes_per_s"]
    print(f"\n{'reader':<16}{'changes/s':>12}{'of PG':>8}{'client CPU':>12}{'server CPU':>12}")
    for name in ("peek_once", "pg_recvlogical", "peek", "stream"):
        row = results[name]
        print(
            f"{name:<16}{row['changes_per_s']:>12,.0f}{row['changes_per_s'] / ceiling:>8.0%}"
            f"{row.get('client_cpu_ms_per_1000', float('nan')):>10.1f}ms"
            f"{row.get('server_cpu_ms_per_1000', float('nan')):>10.1f}ms"
        )
    print("(CPU per 1,000 changes)\n")
    for reader in ("peek", "stream"):
        row = results[f"latency_{reader}"]
        print(
            f"commit → arrival, {reader:<7} p50 {row['p50_ms']:6.1f} ms  "
            f"p99 {row['p99_ms']:6.1f} ms  max {row['max_ms']:6.1f} ms"
        )
    fan = results["fanout"]
    print(
        f"\n{args.fanout} idle subscriptions: each walsender takes "
        f"{fan['idle_cpu_pct_per_walsender']:.2f}% of a core idle and "
        f"{fan['other_table_cpu_ms_per_1000_per_walsender']:.1f} ms CPU per 1,000 changes "
        "of a table it does not publish"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
