"""Does watching cost sync throughput? Live stream throughput with five monitor clients
connected versus none, in one run.

    .venv/bin/python bench/monitor.py [--rows 20000] [--per-tx 100] [--rounds 3] [--clients 5]

A real `runsyncer` (publishing on the Channels layer) and a real daphne run against
their own console database (`searchsync_bench`), source database and osmem-server. One
subscription (snapshot `discard`) is caught up; each round a writer commits `--rows`
new rows, `--per-tx` per transaction, as fast as PostgreSQL takes them, and the round's
throughput is rows / (last document acknowledged - first commit), read from the
worker's own `searchsync_changes_total` on its --metrics-port. Rounds alternate
between no client and `--clients` clients, each holding two websockets open (the
monitor, and the subscription's event tail) and reading everything sent; the clients
count what they receive, to show they were fed. Result: the median of each, and their
ratio (target: within 5%). Absolute rates on a shared machine drift; the ratio, taken
from alternating rounds in one run, is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    ADMIN_DSN,
    ARTIFACTS,
    CONSOLE_DB,
    SOURCE_DB,
    console_env,
    dsn_for,
    machine_note,
    recreate,
    say,
    setup_django,
    wait_until,
)
from tests.support.process import WorkerProcess, free_port, start_daphne  # noqa: E402

NAME = "bench-monitor"
TABLE = "bench_monitor"
TARGET = 0.95
REDIS_DB = 9  # the bench's own Redis database: tests and demos use others


def scrape_changes(port: int) -> float:
    """Row changes the worker acknowledged so far (all ops), from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("searchsync_changes_total{") and f'subscription="{NAME}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class Clients:
    """`count` browsers' worth of websockets, in a thread with its own event loop."""

    def __init__(self, base: str, cookie: str, count: int) -> None:
        self.base, self.cookie, self.count = base, cookie, count
        self.received = 0
        self.connected = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        import aiohttp

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        headers = {"Cookie": f"sessionid={self.cookie}", "Origin": self.base}
        async with aiohttp.ClientSession(headers=headers) as session:
            paths = ["/ws/monitor/", f"/ws/subscriptions/{NAME}/events/"]
            sockets = [
                await session.ws_connect(self.base.replace("http", "ws") + path)
                for _ in range(self.count)
                for path in paths
            ]
            self.connected = len(sockets)
            readers = [asyncio.create_task(self._read(ws)) for ws in sockets]
            await self._stop.wait()
            for ws in sockets:
                await ws.close()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, ws: Any) -> None:
        async for message in ws:
            if message.type.name == "TEXT":
                payload = json.loads(message.data)
                self.received += len(payload.get("events", ())) or 1

    def __enter__(self) -> Clients:
        self._thread.start()
        wait_until(lambda: self.connected == 2 * self.count, 30, "the monitor clients")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: Any = None
        self.next_id = 1

    def setup(self) -> dict[str, str]:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (CONSOLE_DB,)
            ).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(CONSOLE_DB)))
        recreate(SOURCE_DB)
        from osmem_server import OsmemServer

        self.server = OsmemServer.start(japanese=False)
        env = console_env(
            CONSOLE_DB,
            f"redis://127.0.0.1:6379/{REDIS_DB}",
            OPENSEARCH_URL=str(self.server.url),
            ALLOWED_HOSTS="127.0.0.1,localhost",
        )
        setup_django(env)
        return env

    def start(self, env: dict[str, str]) -> tuple[int, str, str]:
        from django.contrib.auth import get_user_model
        from django.contrib.sessions.backends.db import SessionStore

        from syncer.models import Subscription

        with psycopg.connect(dsn_for(SOURCE_DB), autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY, title text, price numeric(10, 2))"
                ).format(sql.Identifier(TABLE))
            )
        Subscription.objects.filter(name__startswith="bench-").delete()
        sub = Subscription(
            name=NAME,
            source_dsn=dsn_for(SOURCE_DB),
            relation=f"public.{TABLE}",
            index_name=NAME,
            snapshot_mode="discard",
            batch_max_age_ms=200,
        )
        sub.full_clean()
        sub.save()
        metrics_port, web_port = free_port(), free_port()
        logs = ARTIFACTS / "monitor"
        logs.mkdir(parents=True, exist_ok=True)
        worker_log = logs / "worker.log"
        worker_log.unlink(missing_ok=True)  # a fresh log each run
        worker = WorkerProcess(
            None, worker_log, "--subscription", NAME, base_env=env, metrics_port=metrics_port
        )
        self.procs.append(worker.process)
        daphne_log = logs / "daphne.log"
        daphne_log.unlink(missing_ok=True)
        self.procs.append(start_daphne(web_port, env, daphne_log))
        user, _ = get_user_model().objects.get_or_create(
            username="bench-monitor", defaults={"is_staff": True, "is_superuser": True}
        )
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        wait_until(
            lambda: Subscription.objects.get(name=NAME).status == "caught_up", 60, "caught up"
        )
        wait_until(lambda: _answers(web_port), 30, "daphne")
        assert session.session_key is not None
        return metrics_port, f"http://127.0.0.1:{web_port}", session.session_key

    def round(self, metrics_port: int) -> float:
        """Write --rows rows; rows/s from the first commit to the last acknowledgement."""
        rows, per_tx = int(self.args.rows), int(self.args.per_tx)
        before = scrape_changes(metrics_port)
        insert = sql.SQL("INSERT INTO {} (id, title, price) VALUES (%s, %s, %s)").format(
            sql.Identifier(TABLE)
        )
        with psycopg.connect(dsn_for(SOURCE_DB)) as conn:
            started = time.monotonic()
            for first in range(self.next_id, self.next_id + rows, per_tx):
                with conn.cursor() as cur:
                    cur.executemany(
                        insert,
                        [(i, f"item {i}", f"{i % 1000}.50") for i in range(first, first + per_tx)],
                    )
                conn.commit()
        self.next_id += rows
        wait_until(
            lambda: scrape_changes(metrics_port) - before >= rows,
            300,
            f"{rows:,} rows acknowledged",
            interval=0.05,
        )
        return rows / (time.monotonic() - started)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.server is not None:
            self.server.close()


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--per-tx", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--clients", type=int, default=5)
    args = parser.parse_args(argv)
    run = Run(args)
    results: dict[str, list[float]] = {"none": [], "clients": []}
    received: list[int] = []
    try:
        env = run.setup()
        metrics_port, base, cookie = run.start(env)
        run.round(metrics_port)  # warm-up: connections, caches, the index's first writes
        for i in range(args.rounds):
            order = ["none", "clients"] if i % 2 == 0 else ["clients", "none"]
            for kind in order:
                if kind == "none":
                    rate = run.round(metrics_port)
                else:
                    with Clients(base, cookie, args.clients) as clients:
                        rate = run.round(metrics_port)
                        time.sleep(1.5)  # the last events and a snapshot reach the clients
                    received.append(clients.received)
                results[kind].append(rate)
                say(f"round {i + 1} {kind}: {rate:,.0f} rows/s")
    finally:
        run.stop()
    none, watched = statistics.median(results["none"]), statistics.median(results["clients"])
    ratio = watched / none
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows_per_round": args.rows,
        "rows_per_transaction": args.per_tx,
        "clients": args.clients,
        "rounds": results,
        "median_none": round(none),
        "median_clients": round(watched),
        "ratio": round(ratio, 3),
        "target": f">= {TARGET}",
        "verdict": "met" if ratio >= TARGET else "MISSED",
        "messages_received_per_clients_round": received,
        "machine": machine_note(),
    }
    (ARTIFACTS / "monitor.json").write_text(json.dumps(summary, indent=2))
    say(
        f"median {none:,.0f} rows/s with no client, {watched:,.0f} with {args.clients} "
        f"({ratio:.3f}; target >= {TARGET}: {summary['verdict']}); clients received "
        f"{received} messages per round"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
