"""How long registering 100,000 live subscriptions through the API takes, and what
renewing, listing and expiring them costs.

    .venv/bin/python bench/live_registration.py [--count 100000] [--batch 1000] [--gateways 100]

A real daphne serves the console against its own database (`searchsync_bench_live`)
and a source database with a real table, so each registration checks its filters the
way production does (CEL validation, field names against the table's columns, the
quotas under their lock). One API token registers `--count` live subscriptions in
batches of `--batch`, spread over `--gateways` gateway ids, each with a filter of its
own text (a tenant among 10,000 and a range: what the matcher's benchmark uses). Then
every gateway's batch heartbeat, a full listing of one gateway by cursor, and the
expiry of all of them (`live_subscriptions.expire`, in its batches). Figures: wall
time, batch latency p50/p99, and rows per second; raw figures in
artifacts/bench/live-registration-*.json.

While the registration runs, a real `runsyncer` (osmem-server, a NATS stream of this
run's own, deleted at the end) owns the sync subscription and refreshes its live
subscriptions every control interval (1 s). Its /metrics is polled every 100 ms from a
thread: each batch's pickup latency (from its 201 to the first sample whose
`searchsync_live_subscriptions_active` includes it), the time from the last 201 until all
are active, each refresh's `searchsync_live_subscriptions_refresh_seconds`, and the
worker's CPU meanwhile (/proc). Then that worker stops and a new one starts with all of
them stored: the time until it has loaded them (its first load).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.live_e2e import NATS_URL, delete_stream, wait_until  # noqa: E402
from bench.procfs import pid_cpu  # noqa: E402
from bench.run import (  # noqa: E402
    ARTIFACTS,
    console_env,
    dsn_for,
    machine_note,
    percentile,
    recreate,
    say,
    setup_django,
)
from tests.support.process import WorkerProcess, free_port, start_daphne  # noqa: E402

CONSOLE_DB = "searchsync_bench_live"
SOURCE_DB = "searchsync_bench_live_source"
NAME = "bench-live"
ACTIVE = f'searchsync_live_subscriptions_active{{subscription="{NAME}"}}'
REFRESH = "searchsync_live_subscriptions_refresh_seconds"
POLL = 0.1


def scrape(port: int) -> dict[str, float]:
    """The worker's live-subscription gauges from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith((ACTIVE, REFRESH + " ")):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


class Watcher(threading.Thread):
    """Polls a worker's /metrics every POLL seconds: (monotonic time, active count,
    last refresh seconds, worker CPU seconds) per sample."""

    def __init__(self, port: int, pid: int) -> None:
        super().__init__(daemon=True)
        self.port, self.pid = port, pid
        self.samples: list[tuple[float, float, float, float]] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                found = scrape(self.port)
            except OSError:  # not serving yet
                found = {}
            if ACTIVE in found:
                now = time.monotonic()
                self.samples.append((now, found[ACTIVE], found[REFRESH], pid_cpu(self.pid)))
            self._stopping.wait(POLL)

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)

    def first_at(self, count: int, after: float) -> float | None:
        """The time of the first sample at or after `after` with `count` active."""
        for at, active, _, _ in self.samples:
            if at >= after and active >= count:
                return at
        return None


def call(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def registration(i: int, gateways: int) -> dict[str, Any]:
    return {
        "gateway_id": f"gw-{i % gateways}",
        "subscription": NAME,
        "filter": f'doc.tenant_id == "t{i % 10_000}" && doc.total > {i % 500}.5',
        "delivery": "nats",
    }


def timed(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 1),
        "p99_ms": round(percentile(sorted(samples), 99) * 1000, 1),
    }


def refreshes(samples: Sequence[tuple[float, float, float, float]]) -> list[tuple[float, float]]:
    """(when seen, seconds) of each refresh, as the gauge changed between samples (one
    every POLL s, a refresh every control interval: two of the same duration count once)."""
    seen: list[tuple[float, float]] = []
    for at, _, refresh, _ in samples:
        if not seen or refresh != seen[-1][1]:
            seen.append((at, refresh))
    return seen[1:]  # the first is the refresh before the registration began


def pickup(
    watcher: Watcher, answered: Sequence[float], batch: int, count: int, started: float
) -> dict[str, Any]:
    """Per batch, from its 201 to the first sample counting it active; from the last 201
    to all active; the refreshes and the worker's CPU meanwhile."""
    latencies = []
    for k, at in enumerate(answered):
        seen = watcher.first_at(min((k + 1) * batch, count), at)
        if seen is None:
            raise RuntimeError(f"batch {k} never became active")
        latencies.append(seen - at)
    done = watcher.first_at(count, answered[-1])
    assert done is not None
    during = [s for s in watcher.samples if started <= s[0] <= done]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(during)]
    each = refreshes(during)
    times = [seconds for _, seconds in each]
    cpu = during[-1][3] - during[0][3]
    wall = during[-1][0] - during[0][0]
    return {
        "batch_pickup": timed(latencies),
        "batch_pickup_max_ms": round(max(latencies) * 1000, 1),
        "last_201_to_all_active_s": round(done - answered[-1], 3),
        "refresh_seconds_while_registering": {
            "count": len(times),
            "p50_ms": round(statistics.median(times) * 1000, 1),
            "p99_ms": round(percentile(sorted(times), 99) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1),
            "each": [[round(at - started, 1), round(seconds * 1000)] for at, seconds in each],
        },
        "metrics_poll_gap_max_ms": round(max(gaps) * 1000, 1),
        "worker_cpu_seconds": round(cpu, 2),
        "worker_cpu_share": round(cpu / wall, 3),
        "wall_seconds": round(wall, 2),
    }


class Workers:
    """The real workers of this run: osmem-server, a NATS stream of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        from osmem_server import OsmemServer

        self.server = OsmemServer.start(japanese=False)
        run_id = uuid.uuid4().hex[:8]
        self.stream = f"searchsync-bench-{run_id}"
        self.env = {
            **env,
            "OPENSEARCH_URL": str(self.server.url),
            "LIVE_NATS_URL": NATS_URL,
            "LIVE_NATS_STREAM": self.stream,
            "LIVE_NATS_SUBJECT_PREFIX": f"bench{run_id}.events",
        }
        self.logs = ARTIFACTS / "live-registration"
        self.started: list[WorkerProcess] = []

    def start(self) -> tuple[WorkerProcess, int]:
        port = free_port()
        log = self.logs / f"worker-{len(self.started) + 1}.log"
        log.unlink(missing_ok=True)
        worker = WorkerProcess(None, log, base_env=self.env, metrics_port=port)
        self.started.append(worker)
        return worker, port

    def close(self) -> None:

        for worker in self.started:
            try:
                worker.terminate()
            except subprocess.TimeoutExpired:
                worker.kill()
        self.server.close()

        delete_stream(self.stream)


def run(args: argparse.Namespace) -> dict[str, Any]:
    load = Path("/proc/loadavg").read_text().split()[:3]
    recreate(CONSOLE_DB)
    recreate(SOURCE_DB)
    with psycopg.connect(dsn_for(SOURCE_DB), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id text, total numeric, meta jsonb)"
        )
    env = console_env(
        CONSOLE_DB,
        # Another session's benchmarks may use Redis DB 8: REDIS_URL picks this run's.
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECRET_KEY="bench-live-registration-" + "k" * 40,
        LIVE_SUBSCRIPTIONS_PER_OWNER=str(args.count),
        LIVE_SUBSCRIPTIONS_MAX=str(args.count),
    )
    setup_django(env)
    from django.contrib.auth.models import User

    from console.models import ApiToken
    from syncer.models import LiveSubscription, Subscription
    from syncer.operations import live_subscriptions

    sub = Subscription(
        name=NAME,
        source_dsn=dsn_for(SOURCE_DB),
        relation="public.orders",
        index_name=NAME,
        snapshot_mode="discard",
    )
    sub.full_clean()
    sub.save()
    user = User.objects.create_superuser("bench-live")
    _, token = ApiToken.issue(user, "bench")
    port = free_port()
    logs = ARTIFACTS / "live-registration"
    logs.mkdir(parents=True, exist_ok=True)
    daphne = start_daphne(port, env, logs / "daphne.log")
    workers = Workers(env)
    base = f"http://127.0.0.1:{port}/api/live-subscriptions"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                call(base, token, "GET", "?limit=1")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        worker, metrics = workers.start()
        wait_until(
            lambda: Subscription.objects.get(name=NAME).status == "caught_up",
            90,
            "the worker caught up",
            interval=0.5,
        )
        wait_until(lambda: ACTIVE in scrape(metrics), 30, "the worker's live gauges", 0.2)
        watcher = Watcher(metrics, worker.pid)
        watcher.start()
        time.sleep(1.5)  # a refresh or two before the first batch

        say(f"registering {args.count:,} in batches of {args.batch:,}, a worker refreshing")
        batches: list[float] = []
        answered: list[float] = []
        started = time.monotonic()
        for first in range(0, args.count, args.batch):
            body = {
                "subscriptions": [
                    registration(i, args.gateways)
                    for i in range(first, min(first + args.batch, args.count))
                ]
            }
            t0 = time.monotonic()
            status, answer = call(base, token, "POST", "", body)
            answered.append(time.monotonic())
            batches.append(answered[-1] - t0)
            if status != 201:
                raise RuntimeError(f"registration refused: {status} {str(answer)[:300]}")
        registered = time.monotonic() - started
        assert LiveSubscription.objects.count() == args.count
        wait_until(lambda: watcher.first_at(args.count, started) is not None, 120, "all active")
        watcher.stop()
        picked = pickup(watcher, answered, args.batch, args.count, started)
        say(f"picked up: {picked}")
        worker.terminate()

        say(f"a new worker loading {args.count:,} stored live subscriptions")
        t0 = time.monotonic()
        worker, metrics = workers.start()
        late = Watcher(metrics, worker.pid)
        late.start()
        wait_until(lambda: late.first_at(args.count, t0) is not None, 180, "the first load")
        late.stop()
        at = late.first_at(args.count, t0)
        assert at is not None
        first_load = {
            "process_start_to_all_active_s": round(at - t0, 2),
            "first_sample_s": round(late.samples[0][0] - t0, 2),
            # The gauge holds the last refresh: the load is the longest the watcher saw,
            # if a poll caught it before the next refresh (one run's polls missed it).
            "longest_refresh_seen_s": round(max(s[2] for s in late.samples), 3),
        }
        say(f"first load: {first_load}")
        worker.terminate()

        say(f"heartbeats of {args.gateways} gateways")
        beats: list[float] = []
        for g in range(args.gateways):
            t0 = time.monotonic()
            status, answer = call(base, token, "PUT", f"/heartbeat?gateway_id=gw-{g}")
            beats.append(time.monotonic() - t0)
            assert status == 200 and answer["renewed"] > 0, answer

        say("listing one gateway by cursor")
        pages: list[float] = []
        seen, cursor = 0, None
        while True:
            query = "?gateway_id=gw-0&limit=1000" + (f"&cursor={cursor}" if cursor else "")
            t0 = time.monotonic()
            status, answer = call(base, token, "GET", query)
            pages.append(time.monotonic() - t0)
            seen += len(answer["items"])
            cursor = answer["next_cursor"]
            if cursor is None:
                break

        say("expiring them all")
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        t0 = time.monotonic()
        expired = live_subscriptions.expire(now=later)
        expiry = time.monotonic() - t0
        assert expired == args.count
    finally:
        daphne.terminate()
        daphne.wait(10)
        workers.close()

    return {
        "count": args.count,
        "batch": args.batch,
        "gateways": args.gateways,
        "register_seconds": round(registered, 2),
        "registered_per_second": round(args.count / registered),
        "register_batch": timed(batches),
        "gateway_heartbeat": {**timed(beats), "per_gateway": args.count // args.gateways},
        "list_pages": {**timed(pages), "listed": seen},
        "expire_seconds": round(expiry, 2),
        "worker_pickup": picked,
        "worker_first_load": first_load,
        "load_average_at_start": load,
        "machine": machine_note(),
        "date": dt.date.today().isoformat(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--gateways", type=int, default=100)
    results = run(parser.parse_args(argv))
    out = ARTIFACTS / f"live-registration-{int(time.time())}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
