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
artifacts/bench/live-registration-*.json. The worker's time to pick them up is not
measured here: the worker's loading of live subscriptions is another part.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import ARTIFACTS, dsn_for, machine_note, percentile, recreate, say  # noqa: E402
from tests.support.process import free_port, start_daphne  # noqa: E402

CONSOLE_DB = "searchsync_bench_live"
SOURCE_DB = "searchsync_bench_live_source"
NAME = "bench-live"
REDIS_DB = 8


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    recreate(CONSOLE_DB)
    recreate(SOURCE_DB)
    with psycopg.connect(dsn_for(SOURCE_DB), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id text, total numeric, meta jsonb)"
        )
    env = {
        **os.environ,
        "DATABASE_URL": dsn_for(CONSOLE_DB),
        "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECRET_KEY": "bench-live-registration-" + "k" * 40,
        "LIVE_SUBSCRIPTIONS_PER_OWNER": str(args.count),
        "LIVE_SUBSCRIPTIONS_MAX": str(args.count),
    }
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from console.models import ApiToken
    from syncer.models import LiveSubscription, Subscription
    from syncer.operations import live_subscriptions

    call_command("migrate", verbosity=0)
    Subscription.objects.create(
        name=NAME, source_dsn=dsn_for(SOURCE_DB), relation="public.orders", index_name=NAME
    )
    user = User.objects.create_superuser("bench-live")
    _, token = ApiToken.issue(user, "bench")
    port = free_port()
    logs = ARTIFACTS / "live-registration"
    logs.mkdir(parents=True, exist_ok=True)
    daphne = start_daphne(port, env, logs / "daphne.log")
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

        say(f"registering {args.count:,} in batches of {args.batch:,}")
        batches: list[float] = []
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
            batches.append(time.monotonic() - t0)
            if status != 201:
                raise RuntimeError(f"registration refused: {status} {str(answer)[:300]}")
        registered = time.monotonic() - started
        assert LiveSubscription.objects.count() == args.count

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
