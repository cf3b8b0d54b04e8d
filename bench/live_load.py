"""How long a worker's first load of 100,000 live subscriptions takes.

    .venv/bin/python bench/live_load.py [--live 100000] [--runs 3] [--texts tenants|distinct]
                                        [--no-setup] [--profile FILE]

The console database (`searchsync_bench_live_load`, created afresh) gets one sync
subscription and `--live` live subscriptions with bench/live_e2e.py's filters (a tenant
among 10,000, one in ten with a range too: 10,000 distinct texts; `--texts distinct`:
each its own text). Each run is a fresh process (empty compile caches, as a starting
worker has) that times `LiveMatching.refresh` of that sync subscription, what
runner.py awaits before the pipeline starts, in wall time and in the process's CPU time
(all its threads: steadier than wall time on a shared machine). `--profile` writes the
first run's cProfile statistics to FILE (the event loop's thread only).
Raw figures in artifacts/bench/live-load-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONSOLE_DB = "searchsync_bench_live_load"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

from bench.run import ARTIFACTS, dsn_for, machine_note, recreate, say  # noqa: E402

NAME = "bench-live-load"
TENANTS = 10_000


def _django() -> None:
    os.environ["DATABASE_URL"] = dsn_for(CONSOLE_DB)
    import django

    django.setup()


def filter_text(i: int, texts: str) -> str:
    """bench/live_e2e.py's filters (10,000 distinct texts), or one text per live
    subscription (`distinct`)."""
    if texts == "distinct":
        return f'doc.user_id == {i} && doc.region == "r-{i % 100}"'
    text = f"doc.tenant == {i % TENANTS}"
    return text + " && doc.total > 50" if i % 10 == 9 else text


def setup(live: int, texts: str) -> None:
    import datetime as dt

    recreate(CONSOLE_DB)
    _django()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from syncer.models import LiveSubscription, Subscription

    call_command("migrate", verbosity=0)
    sub = Subscription.objects.create(
        name=NAME,
        source_dsn=dsn_for(CONSOLE_DB),
        relation="public.orders",
        index_name=NAME,
        snapshot_mode="discard",
    )
    owner, _ = get_user_model().objects.get_or_create(username="bench-live-load")
    now = timezone.now()
    rows = []
    for i in range(live):
        text = filter_text(i, texts)
        rows.append(
            LiveSubscription(
                owner=owner,
                gateway_id=f"gw-{i % 100}",
                subscription=sub,
                filter=text,
                # websocket: the load starts no NATS connection
                delivery="websocket",
                created_at=now,
                expires_at=now + dt.timedelta(hours=2),
            )
        )
    started = time.monotonic()
    LiveSubscription.objects.bulk_create(rows, batch_size=5000)
    say(f"{live:,} live subscriptions inserted in {time.monotonic() - started:.1f} s")


def load_once(profile: str | None) -> dict[str, float]:
    """One first load, in this (fresh) process."""
    import asyncio

    _django()
    from syncer.models import Subscription
    from syncer.worker.live_subscriptions import LiveMatching

    sub = Subscription.objects.get(name=NAME)

    async def load() -> tuple[float, float, int]:
        matching = LiveMatching(queue_size=1000, send_timeout=1.0)
        started, cpu = time.perf_counter(), time.process_time()
        await matching.refresh({sub.pk: sub.name})
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        await matching.close()
        return seconds, cpu, matching.active()[sub.name]

    if profile:
        import cProfile

        profiler = cProfile.Profile()
        seconds, cpu, active = profiler.runcall(asyncio.run, load())
        profiler.dump_stats(profile)
    else:
        seconds, cpu, active = asyncio.run(load())
    return {"seconds": seconds, "cpu_seconds": cpu, "active": active}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--texts", choices=["tenants", "distinct"], default="tenants")
    parser.add_argument("--profile", help="write the first run's cProfile statistics here")
    parser.add_argument("--no-setup", action="store_true", help="reuse the last run's rows")
    parser.add_argument("--load-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_once:
        print(json.dumps(load_once(args.profile)))
        return 0
    if not args.no_setup:
        setup(args.live, args.texts)
    runs = []
    for run in range(args.runs):
        command = [sys.executable, __file__, "--load-once"]
        if args.profile and run == 0:
            command += ["--profile", args.profile]
        out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        say(
            f"run {run + 1}: {result['active']:,} loaded in {result['seconds']:.2f} s "
            f"({result['cpu_seconds']:.2f} s of the worker process's CPU)"
        )
        runs.append(result)
    if not runs:
        return 0
    seconds = [r["seconds"] for r in runs]
    cpu = [r["cpu_seconds"] for r in runs]
    say(
        f"first load: median {statistics.median(seconds):.2f} s, min {min(seconds):.2f} s; "
        f"CPU median {statistics.median(cpu):.2f} s"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out_file = ARTIFACTS / f"live-load-{int(time.time())}.json"
    out_file.write_text(json.dumps({"runs": runs, "machine": machine_note()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
