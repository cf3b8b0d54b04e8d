"""Live subscriptions end to end: source commit to event received from NATS, with 100,000
live subscriptions registered, and what they cost the sync's throughput.

    .venv/bin/python bench/live_e2e.py [--live 100000] [--rate 300] [--seconds 20]
                                       [--rows 10000] [--per-tx 100] [--rounds 2]
                                       [--nats-in-process]

A real `runsyncer` runs two subscriptions against their own console and source
databases, osmem-server and the NATS server on 127.0.0.1:4222 (a stream of this run's
own, deleted at the end): `bench-e2e-live` with `--live` live subscriptions delivered
over NATS (`doc.tenant == T` for 10,000 tenants, so 10 per tenant, on 100 gateways; a
tenth also `&& doc.total > 50`), inserted in bulk as the setup (bench/live_registration.py
measures the API's registration), and `bench-e2e-plain` with none.

- **latency**: one row per transaction on the live table, `--rate` per second for
  `--seconds`; rows' tenants are drawn among `--tenant-space` (100,000: a tenth of the
  rows have a tenant with 10 live subscriptions, about 9.5 of which match, so about one
  event per change; 10,000: every change fans out to about 9.5 events). A plain NATS
  subscriber on the stream's subjects takes the time each event arrives; latency is
  arrival minus the event's `commit_time` (the source's commit, same machine clock):
  p50 / p99 / max over all events (target p99 <= 250 ms).
- **throughput**: rounds alternate between the two tables; each writes `--rows` rows,
  `--per-tx` per transaction, as fast as PostgreSQL takes them; rows / (last
  acknowledgement - first commit), read from the worker's `searchsync_changes_total`.
  Ratio of the medians, live / plain (target >= 0.95). The live rounds' events go to
  NATS too (counted). Each round also reports the CPU it cost, in microseconds per row:
  the worker's (`process_cpu_seconds_total`) and its NATS publisher process's (from
  /proc), which a shared machine's load disturbs far less than the rows per second.
- `--nats-in-process`: the worker publishes in its own event loop (LIVE_NATS_PROCESS
  off) instead of from its publisher process, to compare the two.

Also read from the worker's /metrics: how long loading the 100,000 live subscriptions
takes (`searchsync_live_subscriptions_refresh_seconds`, every control interval).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
import orjson
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procfs import children_cpu, pid_cpu, process_stats, stat_cpu  # noqa: E402
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
from tests.support.process import WorkerProcess, free_port  # noqa: E402

CONSOLE_DB = "searchsync_bench_live_e2e"
SOURCE_DB = "searchsync_bench_live_e2e_source"
LIVE, PLAIN = "bench-e2e-live", "bench-e2e-plain"
TENANTS = 10_000
REDIS_DB = 7
NATS_URL = "nats://127.0.0.1:4222"
TARGET_P99 = 0.250
TARGET_RATIO = 0.95


def delete_stream(stream: str) -> None:
    """Delete the run's JetStream stream (a note, not a failure, if it is not there)."""

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream)
        except Exception as exc:  # never created, or already gone
            say(f"stream {stream} not deleted: {exc}")
        await nc.close()

    asyncio.run(delete())


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics: changes per subscription, and the refresh time."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("searchsync_changes_total{"):
            for name in (LIVE, PLAIN):
                if f'subscription="{name}"' in line:
                    found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith(("process_cpu_seconds_total ", "searchsync_live")):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def postgres_cpu() -> float:
    """CPU seconds of the PostgreSQL backends of this run's databases (its walsenders, the
    writer's, the worker's), known by their process titles."""
    total = 0.0
    for pid, name, fields in process_stats():
        if name != "postgres":
            continue
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if CONSOLE_DB.encode() in title:  # the source database's name starts with it
            total += stat_cpu(fields)
    return total


def nats_server_cpu() -> float:
    """CPU seconds of the NATS server (shared with other sessions: a rough figure)."""
    return sum(stat_cpu(fields) for _, name, fields in process_stats() if name == "nats-server")


class Round:
    """One throughput round: rows per second, and the CPU it took per row."""

    def __init__(
        self,
        rate: float,
        worker_us: float,
        publisher_us: float,
        *,
        writer_rate: float = 0.0,
        nats_server_us: float = 0.0,
        bench_us: float = 0.0,
        osmem_us: float = 0.0,
        postgres_us: float = 0.0,
    ) -> None:
        self.osmem_us, self.postgres_us = osmem_us, postgres_us
        self.rate, self.worker_us, self.publisher_us = rate, worker_us, publisher_us
        self.writer_rate = writer_rate
        """Rows per second PostgreSQL took from the writer (the sync's rate is below)."""
        self.nats_server_us = nats_server_us
        self.bench_us = bench_us
        """This process: the writer and the NATS receiver thread (every event arrives)."""


class Receiver(threading.Thread):
    """A plain NATS subscriber on the stream's subjects: arrival time minus commit time."""

    def __init__(self, subjects: str) -> None:
        super().__init__(daemon=True)
        self.subjects = subjects
        self.latencies: list[float] = []
        self.count = 0
        self.recording = False
        self.ready = threading.Event()
        self._stopping = threading.Event()

    def run(self) -> None:
        async def main() -> None:
            nc = await nats.connect(NATS_URL)

            async def got(msg: Any) -> None:
                now = time.time()
                self.count += 1
                if self.recording:
                    self.latencies.append(now - orjson.loads(msg.data)["commit_time"])

            await nc.subscribe(self.subjects, cb=got)
            await nc.flush()
            self.ready.set()
            while not self._stopping.is_set():
                await asyncio.sleep(0.05)
            await nc.drain()

        asyncio.run(main())

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.stream = f"searchsync-bench-{self.run_id}"
        self.prefix = f"bench{self.run_id}.events"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: Any = None
        self.next_id = 1
        self.worker_pid = 0

    def setup(self) -> dict[str, str]:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        recreate(CONSOLE_DB)
        recreate(SOURCE_DB)
        from osmem_server import OsmemServer

        self.server = OsmemServer.start(japanese=False)
        env = console_env(
            CONSOLE_DB,
            f"redis://127.0.0.1:6379/{REDIS_DB}",
            OPENSEARCH_URL=str(self.server.url),
            LIVE_NATS_URL=NATS_URL,
            LIVE_NATS_STREAM=self.stream,
            LIVE_NATS_SUBJECT_PREFIX=self.prefix,
            LIVE_NATS_PROCESS="false" if self.args.nats_in_process else "true",
        )
        setup_django(env)
        return env

    def subscriptions(self) -> None:
        import datetime as dt

        from django.contrib.auth import get_user_model
        from django.utils import timezone

        from syncer.models import LiveSubscription, Subscription

        with psycopg.connect(dsn_for(SOURCE_DB), autocommit=True) as conn:
            for name in (LIVE, PLAIN):
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} (id bigint PRIMARY KEY, tenant int, "
                        "total numeric(10, 2), note text)"
                    ).format(sql.Identifier(name.replace("-", "_")))
                )
        subs = {}
        for name in (LIVE, PLAIN):
            sub = Subscription(
                name=name,
                source_dsn=dsn_for(SOURCE_DB),
                relation=f"public.{name.replace('-', '_')}",
                index_name=name,
                snapshot_mode="discard",
            )
            sub.full_clean()
            sub.save()
            subs[name] = sub
        owner, _ = get_user_model().objects.get_or_create(username="bench-live-e2e")
        now = timezone.now()
        expires = now + dt.timedelta(hours=2)
        rows = []
        for i in range(int(self.args.live)):
            tenant = i % TENANTS
            text = f"doc.tenant == {tenant}"
            if i % 10 == 9:
                text += " && doc.total > 50"
            rows.append(
                LiveSubscription(
                    owner=owner,
                    gateway_id=f"gw-{i % 100}",
                    subscription=subs[LIVE],
                    filter=text,
                    delivery="nats",
                    created_at=now,
                    expires_at=expires,
                )
            )
        started = time.monotonic()
        LiveSubscription.objects.bulk_create(rows, batch_size=5000)
        say(f"{len(rows):,} live subscriptions inserted in {time.monotonic() - started:.1f} s")

    def start(self, env: dict[str, str]) -> int:
        from syncer.models import Subscription

        port = free_port()
        logs = ARTIFACTS / "live-e2e"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / "worker.log"
        log.unlink(missing_ok=True)
        worker = WorkerProcess(None, log, base_env=env, metrics_port=port)
        self.procs.append(worker.process)
        self.worker_pid = worker.process.pid
        wait_until(
            lambda: all(
                s.status == "caught_up" for s in Subscription.objects.filter(name__in=[LIVE, PLAIN])
            ),
            90,
            "caught up",
            interval=0.5,
        )
        return port

    def paced(self, port: int, receiver: Receiver) -> dict[str, Any]:
        rate, seconds = float(self.args.rate), float(self.args.seconds)
        rng = random.Random(7)
        insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, 'x')").format(
            sql.Identifier(LIVE.replace("-", "_"))
        )
        before = scrape(port).get(LIVE, 0.0)
        total = int(rate * seconds)
        receiver.recording = True
        with psycopg.connect(dsn_for(SOURCE_DB), autocommit=True) as conn:
            started = time.monotonic()
            for n in range(total):
                due = started + n / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                conn.execute(
                    insert,
                    (self.next_id, rng.randrange(int(self.args.tenant_space)), rng.randrange(100)),
                )
                self.next_id += 1
            behind = time.monotonic() - started - seconds
        wait_until(lambda: scrape(port).get(LIVE, 0.0) - before >= total, 120, "paced rows")
        time.sleep(2)  # the last events reach the receiver
        receiver.recording = False
        lat = sorted(receiver.latencies)
        return {
            "changes": total,
            "rate": rate,
            "writer_behind_s": round(behind, 2),
            "events": len(lat),
            "p50_ms": round(percentile(lat, 50) * 1000, 1),
            "p99_ms": round(percentile(lat, 99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1),
        }

    def round(self, port: int, name: str) -> Round:
        rows, per_tx = int(self.args.rows), int(self.args.per_tx)
        rng = random.Random(self.next_id)
        scraped = scrape(port)
        before = scraped.get(name, 0.0)
        cpu_before = scraped.get("process_cpu_seconds_total", 0.0)
        children_before = children_cpu(self.worker_pid)
        nats_before, bench_before = nats_server_cpu(), time.process_time()
        osmem_before, postgres_before = pid_cpu(self.server.pid), postgres_cpu()
        insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, 'x')").format(
            sql.Identifier(name.replace("-", "_"))
        )
        with psycopg.connect(dsn_for(SOURCE_DB)) as conn:
            started = time.monotonic()
            for first in range(self.next_id, self.next_id + rows, per_tx):
                with conn.cursor() as cur:
                    cur.executemany(
                        insert,
                        [
                            (i, rng.randrange(int(self.args.tenant_space)), rng.randrange(100))
                            for i in range(first, first + per_tx)
                        ],
                    )
                conn.commit()
            written = time.monotonic() - started
        self.next_id += rows
        wait_until(lambda: scrape(port).get(name, 0.0) - before >= rows, 300, f"{name} rows")
        rate = rows / (time.monotonic() - started)
        time.sleep(0.3)  # the events of the last rows reach NATS: their CPU counts too
        cpu = scrape(port).get("process_cpu_seconds_total", 0.0) - cpu_before
        children = children_cpu(self.worker_pid) - children_before
        return Round(
            rate,
            cpu / rows * 1e6,
            children / rows * 1e6,
            writer_rate=rows / written,
            nats_server_us=(nats_server_cpu() - nats_before) / rows * 1e6,
            bench_us=(time.process_time() - bench_before) / rows * 1e6,
            osmem_us=(pid_cpu(self.server.pid) - osmem_before) / rows * 1e6,
            postgres_us=(postgres_cpu() - postgres_before) / rows * 1e6,
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.server is not None:
            self.server.close()

        delete_stream(self.stream)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--per-tx", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each table")
    parser.add_argument(
        "--nats-in-process",
        action="store_true",
        help="publish to NATS in the worker's event loop (LIVE_NATS_PROCESS=false)",
    )
    parser.add_argument(
        "--tenant-space",
        type=int,
        default=100_000,
        help="rows' tenants are drawn from this many: 100,000 makes a tenth of the changes "
        "match (about 9.5 live subscriptions each); 10,000 makes every change match",
    )
    args = parser.parse_args(argv)
    run = Run(args)
    receiver = Receiver(f"{run.prefix}.>")
    receiver.start()
    receiver.ready.wait(10)
    rounds: dict[str, list[Round]] = {LIVE: [], PLAIN: []}
    try:
        env = run.setup()
        run.subscriptions()
        port = run.start(env)
        wait_until(
            lambda: (
                scrape(port).get(f'searchsync_live_subscriptions_active{{subscription="{LIVE}"}}')
                == args.live
            ),
            120,
            "the live subscriptions loaded",
            interval=0.5,
        )
        refresh = scrape(port).get("searchsync_live_subscriptions_refresh_seconds")
        say(f"worker loads {args.live:,} live subscriptions in {refresh:.3f} s")
        latency = run.paced(port, receiver)
        say(
            f"latency at {args.rate:.0f} changes/s: p50 {latency['p50_ms']} ms, p99 "
            f"{latency['p99_ms']} ms, max {latency['max_ms']} ms over {latency['events']:,} events"
        )
        run.round(port, PLAIN)  # warm-up
        for i in range(args.rounds):
            order = [PLAIN, LIVE] if i % 2 == 0 else [LIVE, PLAIN]
            for name in order:
                measured = run.round(port, name)
                rounds[name].append(measured)
                say(
                    f"round {i + 1} {name}: {measured.rate:,.0f} rows/s (written at "
                    f"{measured.writer_rate:,.0f}); CPU per row: worker "
                    f"{measured.worker_us:.0f} us, publisher {measured.publisher_us:.0f} us, "
                    f"nats-server {measured.nats_server_us:.0f} us, bench "
                    f"{measured.bench_us:.0f} us, osmem {measured.osmem_us:.0f} us, "
                    f"postgres {measured.postgres_us:.0f} us"
                )
        refreshes = []
        for _ in range(5):  # the refreshes that only diff (every control interval)
            time.sleep(1.1)
            refreshes.append(scrape(port).get("searchsync_live_subscriptions_refresh_seconds", 0.0))
        final = scrape(port)
    finally:
        run.stop()
        receiver.stop()
    plain = statistics.median(r.rate for r in rounds[PLAIN])
    live = statistics.median(r.rate for r in rounds[LIVE])
    ratio = live / plain
    cpu = {
        name: {
            "worker_us_per_row": round(statistics.median(r.worker_us for r in measured), 1),
            "publisher_us_per_row": round(statistics.median(r.publisher_us for r in measured), 1),
            "nats_server_us_per_row": round(
                statistics.median(r.nats_server_us for r in measured), 1
            ),
            "bench_us_per_row": round(statistics.median(r.bench_us for r in measured), 1),
            "osmem_us_per_row": round(statistics.median(r.osmem_us for r in measured), 1),
            "postgres_us_per_row": round(statistics.median(r.postgres_us for r in measured), 1),
            "writer_rows_per_s": round(statistics.median(r.writer_rate for r in measured)),
        }
        for name, measured in rounds.items()
    }
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "live_subscriptions": args.live,
        "nats": "in the worker's event loop" if args.nats_in_process else "publisher process",
        "tenant_space": args.tenant_space,
        "refresh_seconds": [round(refresh or 0.0, 3), *(round(r, 3) for r in refreshes)],
        "latency": latency,
        "latency_target": f"p99 <= {TARGET_P99 * 1000:.0f} ms",
        "latency_verdict": "met" if latency["p99_ms"] <= TARGET_P99 * 1000 else "MISSED",
        "throughput_rounds": {name: [r.rate for r in done] for name, done in rounds.items()},
        "cpu_per_row_median": cpu,
        "median_plain": round(plain),
        "median_live": round(live),
        "ratio": round(ratio, 3),
        "ratio_target": f">= {TARGET_RATIO}",
        "ratio_verdict": "met" if ratio >= TARGET_RATIO else "MISSED",
        "events_received": receiver.count,
        "worker_metrics": {k: v for k, v in final.items() if k.startswith("searchsync_live")},
        "machine": machine_note(),
    }
    (ARTIFACTS / "live-e2e.json").write_text(json.dumps(summary, indent=2))
    say(
        f"worker CPU per row (median): {cpu[PLAIN]['worker_us_per_row']:.0f} us plain, "
        f"{cpu[LIVE]['worker_us_per_row']:.0f} us live (+ publisher process "
        f"{cpu[LIVE]['publisher_us_per_row']:.0f} us)"
    )
    say(
        f"throughput: median {plain:,.0f} rows/s plain, {live:,.0f} with {args.live:,} live "
        f"subscriptions ({ratio:.3f}; target >= {TARGET_RATIO}: {summary['ratio_verdict']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
