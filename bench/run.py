"""`make bench`: backfill throughput, live-stream latency, worker memory and the cost of
failing documents, in one run.

    .venv/bin/python bench/run.py [--rows 100000] [--rounds 2] [--rate 1000]
                                  [--failure-rows 30000] [--failure-percent 1]
                                  [--skip-backfill] [--skip-live] [--skip-failures]
                                  [--only {backfill,live,failures} ...]

What it does (docs/benchmarks.md explains the figures):

1. Backfill. A source table of `--rows` realistic rows is copied into a fresh index by
   the product (a Subscription with snapshot mode `index`, run by bench/worker.py, which
   builds the pipeline exactly as `runsyncer` does): docs/s from the worker's start to
   `snapshot_completed_at`. The ceiling is the same documents (read back from the index
   the product filled, with the same external versions) bulk-loaded straight into a
   fresh index with `opensearchpy.helpers.bulk` in chunks of 1000. Product and ceiling
   alternate (P C, then C P, ...) since absolute times on a shared machine drift.
2. Live stream. A caught-up subscription (snapshot mode `discard` on an empty table)
   while a writer commits 20,000 inserts, 10,000 updates and 5,000 deletes, one change
   per transaction, paced at `--rate` changes/s: achieved write and acknowledge rates,
   commit→acknowledged latency percentiles, and the worker's peak RSS.
3. Failures. A table of `--failure-rows` realistic rows plus a text column `code`,
   "x-<id>" (not a number) on `--failure-percent` of them, digits on the rest, is
   backfilled like (1) into an index that maps `code` as an integer: OpenSearch
   rejects the bad rows for good and each becomes a DeadLetter. The same rows with
   digits everywhere, into the same mapping, are the clean run. Failing and clean
   alternate over `--rounds`: docs/s of each and their ratio. After each run the dead
   letters and the index's ids are checked against the rows (bench/failures.py).

Everything runs against its own databases (`searchsync_bench` for the console,
`searchsync_bench_source` for the source) and its own osmem-server. Replication
slots, publications (the source database is dropped), workers and osmem are cleaned
up on exit, Ctrl-C and errors. The whole run is bounded by `--budget` seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import failures  # noqa: E402

# The processes the benchmarks start serve with DEBUG off: they refuse the public key.
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))

ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# BENCH_DB_SUFFIX keeps benches run side by side (e.g. from two checkouts) apart.
DB_SUFFIX = os.environ.get("BENCH_DB_SUFFIX", "")
CONSOLE_DB = f"searchsync_bench{DB_SUFFIX}"
SOURCE_DB = f"searchsync_bench_source{DB_SUFFIX}"
ARTIFACTS = ROOT / "artifacts" / "bench"
PREFIX = "bench-"

TARGET_RATIO = 0.90
TARGET_P99_MS = 300.0
TARGET_RSS_MB = 150.0
HEADER = ("metric", "value", "target", "verdict")
PEER = "mature peer, same workload on this machine: p50 ~490 ms, p99 ~850 ms"

T = TypeVar("T")


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def dsn_for(database: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


def recreate(database: str) -> None:
    """Drop `database`, with the replication slots an earlier run left on it, and create it
    empty: every benchmark starts from nothing."""
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active",
            (database,),
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def console_env(console_db: str, redis_url: str, **settings: str) -> dict[str, str]:
    """The environment a bench's daphne, worker and own process share: this run's console
    database and Redis, the console's settings module, quiet logs, and `settings`."""
    return {
        **os.environ,
        "DATABASE_URL": dsn_for(console_db),
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "LOG_LEVEL": "WARNING",
        **settings,
    }


def setup_django(env: dict[str, str]) -> None:
    """Set this process up with `env` (what the console's settings read) and migrate its
    console database, so the bench itself reads and writes what its servers do."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# -- time budget -----------------------------------------------------------------------


class BenchTimeout(RuntimeError):
    """A phase did not finish in its time, or the whole budget ran out."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def cap(self, seconds: float) -> float:
        """`seconds`, or less if the whole budget ends sooner."""
        left = self.left()
        if left <= 0:
            raise BenchTimeout("the bench's time budget is spent")
        return min(seconds, left)


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll `predicate` until it returns something truthy; BenchTimeout after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- data ------------------------------------------------------------------------------

TABLE_DDL = """
CREATE TABLE {table} (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    price numeric(10, 2) NOT NULL,
    updated_at timestamptz NOT NULL,
    attrs jsonb NOT NULL,
    tags int[] NOT NULL
)
"""
COLUMNS = ("id", "title", "price", "updated_at", "attrs", "tags")

_ADJECTIVES = ("compact", "rugged", "classic", "wireless", "premium", "foldable", "ultralight")
_COLORS = ("black", "crimson", "navy", "olive", "ivory", "graphite", "teal", "amber")
_NOUNS = ("desk lamp", "backpack", "kettle", "headphones", "notebook", "water bottle", "jacket")
_MATERIALS = ("steel", "bamboo", "leather", "canvas", "aluminium", "ceramic")
_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def make_row(rng: random.Random, row_id: int) -> tuple[Any, ...]:
    """One realistic row: ~40-character title, price, timestamp, small jsonb, int array."""
    title = (
        f"{rng.choice(_ADJECTIVES).title()} {rng.choice(_COLORS)} {rng.choice(_NOUNS)}, "
        f"{rng.choice(_MATERIALS)} {rng.randrange(100, 9999)}"
    )
    attrs = {
        "color": rng.choice(_COLORS),
        "size": rng.choice(("S", "M", "L", "XL")),
        "stock": rng.randrange(0, 500),
        "rating": round(rng.uniform(1, 5), 1),
    }
    tags = [rng.randrange(1, 200) for _ in range(rng.randrange(1, 6))]
    return (
        row_id,
        title,
        Decimal(rng.randrange(99, 99_999)) / 100,
        _EPOCH + dt.timedelta(seconds=rng.randrange(0, 300 * 86400)),
        Jsonb(attrs),
        tags,
    )


def fill_table(
    conn: psycopg.Connection[Any],
    table: str,
    rows: int,
    extra: tuple[str, Callable[[int], Any]] | None = None,
) -> None:
    """`rows` rows of `make_row`, plus a column `extra[0]` valued `extra[1](row_id)`."""
    rng = random.Random(42)
    columns = [*COLUMNS, extra[0]] if extra else list(COLUMNS)
    query = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with conn.cursor() as cur, cur.copy(query) as copy:
        for row_id in range(1, rows + 1):
            row = make_row(rng, row_id)
            copy.write_row((*row, extra[1](row_id)) if extra else row)
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def plan_ops(inserts: int, updates: int, deletes: int, rng: random.Random) -> list[tuple[str, int]]:
    """Inserts first, then inserts, updates and deletes of live ids, shuffled together."""
    head = min(1000, inserts)
    kinds = ["I"] * (inserts - head) + ["U"] * updates + ["D"] * deletes
    rng.shuffle(kinds)
    live: list[int] = []
    next_id = 1
    ops: list[tuple[str, int]] = []
    for kind in ["I"] * head + kinds:
        if kind == "I" or not live:
            ops.append(("I", next_id))
            live.append(next_id)
            next_id += 1
        elif kind == "U":
            ops.append(("U", rng.choice(live)))
        else:
            i = rng.randrange(len(live))
            live[i], live[-1] = live[-1], live[i]
            ops.append(("D", live.pop()))
    return ops


class Writer(threading.Thread):
    """Commits `ops` one per transaction, paced at `rate` per second.

    `synchronous_commit=False` commits without waiting for the WAL flush: the writer is
    then not bound by the disk's fsyncs, but a change becomes decodable only when the WAL
    writer flushes it (every wal_writer_delay, 200 ms by default), which latency shows.
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        ops: Sequence[tuple[str, int]],
        rate: float,
        synchronous_commit: bool = True,
    ):
        super().__init__(name="bench-writer", daemon=True)
        self.dsn, self.ops, self.rate = dsn, ops, rate
        self.synchronous_commit = synchronous_commit
        self.stopping = threading.Event()
        self.done = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.error: BaseException | None = None
        ident = sql.Identifier(table)
        self.insert = sql.SQL(
            "INSERT INTO {} (id, title, price, updated_at, attrs, tags) "
            "VALUES (%s, %s, %s, now(), %s, %s)"
        ).format(ident)
        self.update = sql.SQL(
            "UPDATE {} SET title = %s, price = %s, updated_at = now(), attrs = %s, tags = %s "
            "WHERE id = %s"
        ).format(ident)
        self.delete = sql.SQL("DELETE FROM {} WHERE id = %s").format(ident)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            if not self.synchronous_commit:
                conn.execute("SET synchronous_commit = off")
            start = time.monotonic()
            for n, (kind, row_id) in enumerate(self.ops):
                if self.stopping.is_set():
                    return
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if kind == "D":
                    conn.execute(self.delete, (row_id,), prepare=True)
                else:
                    _, title, price, _, attrs, tags = make_row(rng, row_id)
                    if kind == "I":
                        conn.execute(self.insert, (row_id, title, price, attrs, tags), prepare=True)
                    else:
                        conn.execute(self.update, (title, price, attrs, tags, row_id), prepare=True)
                now = time.time()
                if self.first_at is None:
                    self.first_at = now
                self.last_at = now
                self.done += 1


@dataclass(frozen=True)
class LiveLoad:
    """What Bench.live writes: `plan_ops` of these counts into `table`, paced at `rate`
    (Writer's `synchronous_commit`)."""

    table: str
    rate: float
    inserts: int
    updates: int
    deletes: int
    synchronous_commit: bool = True

    @property
    def subscription(self) -> str:
        """bench_live → bench-live: the subscription (and index) that follows `table`."""
        return PREFIX + self.table.removeprefix("bench_").replace("_", "-")


# -- processes -------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples a process's RSS with psutil, from outside (cross-checks ru_maxrss)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name=f"rss-{pid}", daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self.stopping.wait(self.interval)


@dataclass
class Worker:
    """bench/worker.py for one subscription, with its log and result files."""

    name: str
    env: dict[str, str]
    started: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return ARTIFACTS / f"{self.name}.json"

    @property
    def log(self) -> Path:
        return ARTIFACTS / f"{self.name}.log"

    def start(self, max_seconds: float) -> Worker:
        for path in (self.out, self.out.with_name(self.out.name + ".progress")):
            path.unlink(missing_ok=True)
        with self.log.open("wb") as log:
            self.started = time.time()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "worker.py"),
                    "--subscription",
                    self.name,
                    "--out",
                    str(self.out),
                    "--max-seconds",
                    str(int(max_seconds)),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.sampler = RssSampler(self.process.pid)
        self.sampler.start()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def progress(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(
                self.out.with_name(self.out.name + ".progress").read_text()
            )
            return data
        except (OSError, ValueError):
            return {}

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        """SIGTERM, wait for the flush (then kill), and read the worker's result."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    say(f"worker {self.name} did not stop in {timeout:.0f} s; killing it")
                    self.process.kill()
                    self.process.wait(10)
        if self.sampler is not None:
            self.sampler.stopping.set()
            self.sampler.join(5)
        try:
            self.result = json.loads(self.out.read_text())
        except (OSError, ValueError):
            self.result = {}
        return self.result

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# -- the bench -------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    budget: Budget
    source_dsn: str = dsn_for(SOURCE_DB)
    source_admin_dsn: str = ADMIN_DSN
    """A superuser connection to the source's cluster (bench/idle.py may run its own)."""
    console_dsn: str = dsn_for(CONSOLE_DB)
    opensearch_url: str = ""
    server: Any = None
    workers: list[Worker] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)

    # setup and teardown

    def setup(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (CONSOLE_DB,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(CONSOLE_DB)))
        os.environ["DATABASE_URL"] = self.console_dsn
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.drop_source()
        with psycopg.connect(self.source_admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SOURCE_DB)))
        from syncer.models import Subscription

        Subscription.objects.filter(name__startswith=PREFIX).delete()
        self.start_sink()

    def start_sink(self) -> None:
        """Start the OpenSearch the workers write to (bench/ceiling.py starts another)."""
        from osmem_server import OsmemServer

        self.server = OsmemServer.start(japanese=False)
        self.opensearch_url = str(self.server.url)
        say(f"osmem-server {self.server.version} at {self.opensearch_url}")

    def drop_source(self) -> None:
        """Drop the source database and its replication slots (publications go with it)."""
        with psycopg.connect(self.source_admin_dsn, autocommit=True, connect_timeout=10) as conn:
            deadline = time.monotonic() + 15
            while True:
                slots = conn.execute(
                    "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s",
                    (SOURCE_DB,),
                ).fetchall()
                for slot, active in slots:
                    if not active:
                        try:
                            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                        except psycopg.errors.ObjectInUse:
                            pass
                if not any(active for _, active in slots) or time.monotonic() > deadline:
                    break
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE database = %s AND active",
                    (SOURCE_DB,),
                )
                time.sleep(0.5)
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SOURCE_DB))
            )

    def teardown(self) -> None:
        for writer in self.writers:
            writer.stopping.set()
            writer.join(10)
        for worker in self.workers:
            if worker.alive():
                worker.stop(timeout=30)
        try:
            self.drop_source()
        except psycopg.Error as exc:
            say(f"could not drop {SOURCE_DB}: {exc}")
        try:
            from syncer.models import Subscription

            Subscription.objects.filter(name__startswith=PREFIX).delete()
        except Exception as exc:  # the console database may be why we are here
            say(f"could not delete bench subscriptions: {exc}")
        if self.server is not None:
            self.server.close()
            if self.server.process.stdout is not None:
                self.server.process.stdout.close()

    # helpers

    def client(self) -> Any:
        from opensearchpy import OpenSearch

        return OpenSearch(hosts=[self.opensearch_url], timeout=120)

    def worker_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.console_dsn,
            "OPENSEARCH_URL": self.opensearch_url,
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }

    def subscription(
        self,
        name: str,
        relation: str,
        snapshot_mode: str,
        mappings: dict[str, Any] | None = None,
    ) -> Any:
        from syncer.models import Subscription

        sub = Subscription(
            name=name,
            source_dsn=self.source_dsn,
            relation=relation,
            index_name=name,
            index_mappings=mappings or {},
            snapshot_mode=snapshot_mode,
        )
        sub.full_clean()
        sub.save()
        return sub

    def start_worker(self, name: str) -> Worker:
        worker = Worker(name, self.worker_env()).start(max_seconds=self.budget.cap(600))
        self.workers.append(worker)
        return worker

    def watch(self, worker: Worker, sub: Any, check: Callable[[Any], T | None]) -> Callable[[], T]:
        """A predicate for wait_until that also fails fast on a dead or failed worker."""

        def predicate() -> Any:
            sub.refresh_from_db()
            if sub.status == "error":
                raise RuntimeError(f"subscription {sub.name} failed: {sub.last_error}")
            if not worker.alive():
                raise RuntimeError(f"worker {sub.name} exited early:\n{worker.tail()}")
            return check(sub)

        return predicate

    def retire(self, sub: Any) -> None:
        """Drop a finished subscription's slot and publication so WAL is not retained."""
        from syncer.sources.postgres.replication import drop_replication

        drop_replication(self.source_dsn, sub.slot_name)

    # 1. backfill

    def prepare_backfill(self) -> None:
        started = time.monotonic()
        with psycopg.connect(self.source_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL(TABLE_DDL).format(table=sql.Identifier("bench_items")))
            fill_table(conn, "bench_items", self.args.rows)
            size = conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('bench_items'))"
            ).fetchone()
        say(
            f"source table bench_items: {self.args.rows:,} rows, "
            f"{size[0] if size else '?'}, made in {time.monotonic() - started:.1f} s"
        )

    def product_backfill(self, round_no: int) -> dict[str, Any]:
        figures = {
            "round": round_no,
            **self.timed_snapshot(f"{PREFIX}backfill-{round_no}", "public.bench_items"),
        }
        say(
            f"product backfill #{round_no}: {self.args.rows:,} docs in "
            f"{figures['seconds']:.1f} s = {figures['docs_per_s']:,.0f} docs/s (worker start "
            f"to snapshot_completed_at; process start-up {figures['startup_s']:.1f} s)"
        )
        say(f"  where the worker's time went, {describe_breakdown(figures['time'])}")
        if figures["rows"] != self.args.rows:
            raise RuntimeError(
                f"the snapshot indexed {figures['rows']:,} rows, not {self.args.rows:,}"
            )
        return figures

    def timed_snapshot(
        self, name: str, relation: str, mappings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Backfill `relation` with a new subscription `name`: the time and the worker's figures.

        The subscription stays (its slot and publication are dropped), with its index.
        """
        sub = self.subscription(name, relation, "index", mappings)
        worker = self.start_worker(name)
        completed = wait_until(
            self.watch(worker, sub, lambda s: s.snapshot_completed_at),
            timeout=self.budget.cap(240),
            what=f"{name}'s snapshot to complete",
            interval=0.1,
        )
        result = worker.stop()
        self.retire(sub)
        seconds = completed.timestamp() - worker.started
        rows = int(result.get("snapshot_rows", 0))
        internal = None
        if result.get("snapshot_done_at") and result.get("pipeline_started"):
            internal = result["snapshot_done_at"] - result["pipeline_started"]
        return {
            "index": name,
            "subscription_id": sub.pk,
            "rows": rows,
            "seconds": seconds,
            "docs_per_s": rows / seconds,
            "startup_s": (result.get("pipeline_started") or worker.started) - worker.started,
            "pipeline_seconds": internal,
            "peak_rss_bytes": result.get("peak_rss_bytes"),
            "sampled_peak_rss_bytes": worker.sampler.peak if worker.sampler else None,
            "ru_maxrss_bytes": result.get("ru_maxrss_bytes"),
            "stats": result.get("stats"),
            "time": breakdown(
                result.get("calls", []),
                result.get("pipeline_started") or 0.0,
                result.get("snapshot_done_at") or 0.0,
            ),
        }

    def read_back(self, index: str) -> list[tuple[str, int, dict[str, Any]]]:
        """Every document of `index` with its external version, as the product wrote it."""
        client = self.client()
        docs: list[tuple[str, int, dict[str, Any]]] = []
        client.indices.refresh(index=index)
        response = client.search(
            index=index,
            scroll="5m",
            body={"size": 2000, "sort": ["_doc"], "version": True},
            request_timeout=120,
        )
        deadline = time.monotonic() + self.budget.cap(120)
        while response["hits"]["hits"]:
            for hit in response["hits"]["hits"]:
                docs.append((hit["_id"], int(hit["_version"]), hit["_source"]))
            if time.monotonic() > deadline:
                raise BenchTimeout(f"reading {index} back took too long")
            response = client.scroll(scroll_id=response["_scroll_id"], scroll="5m")
        client.clear_scroll(scroll_id=response["_scroll_id"])
        client.close()
        return docs

    def count(self, index: str) -> int:
        client = self.client()
        try:
            client.indices.refresh(index=index)
            return int(client.count(index=index)["count"])  # once, not in a loop
        finally:
            client.close()

    def index_ids(self, index: str) -> list[str]:
        """The `_id` of every document in `index`."""
        client = self.client()
        ids: list[str] = []
        try:
            client.indices.refresh(index=index)
            response = client.search(
                index=index,
                scroll="5m",
                body={"size": 5000, "sort": ["_doc"], "_source": False},
                request_timeout=120,
            )
            deadline = time.monotonic() + self.budget.cap(120)
            while response["hits"]["hits"]:
                ids.extend(hit["_id"] for hit in response["hits"]["hits"])
                if time.monotonic() > deadline:
                    raise BenchTimeout(f"reading the ids of {index} took too long")
                response = client.scroll(scroll_id=response["_scroll_id"], scroll="5m")
            client.clear_scroll(scroll_id=response["_scroll_id"])
        finally:
            client.close()
        return ids

    def delete_index(self, index: str) -> None:
        client = self.client()
        try:
            client.indices.delete(index=index, ignore_unavailable=True)
        finally:
            client.close()

    def ceiling(
        self, round_no: int, docs: Sequence[tuple[str, int, dict[str, Any]]]
    ) -> dict[str, Any]:
        from opensearchpy import helpers

        index = f"{PREFIX}ceiling-{round_no}"
        client = self.client()
        try:
            client.indices.create(index=index, body={})
            actions = [
                {
                    "_op_type": "index",
                    "_index": index,
                    "_id": doc_id,
                    "version": version,
                    "version_type": "external",
                    "_source": source,
                }
                for doc_id, version, source in docs
            ]
            self.budget.cap(240)
            started = time.perf_counter()
            ok, errors = helpers.bulk(client, actions, chunk_size=1000, max_retries=0)
            seconds = time.perf_counter() - started
        finally:
            client.close()
        if errors or ok != len(docs):
            raise RuntimeError(f"ceiling bulk: {ok} ok, errors: {str(errors)[:500]}")
        figures = {
            "round": round_no,
            "index": index,
            "rows": ok,
            "seconds": seconds,
            "docs_per_s": ok / seconds,
        }
        say(f"ceiling #{round_no}: {ok:,} docs in {seconds:.1f} s = {ok / seconds:,.0f} docs/s")
        return figures

    def backfill(self) -> dict[str, Any]:
        self.prepare_backfill()
        products: list[dict[str, Any]] = []
        ceilings: list[dict[str, Any]] = []
        docs: list[tuple[str, int, dict[str, Any]]] = []
        for round_no in range(1, self.args.rounds + 1):
            order = ("P", "C") if round_no % 2 == 1 else ("C", "P")
            for kind in order:
                if kind == "P":
                    figures = self.product_backfill(round_no)
                    products.append(figures)
                    if not docs:
                        docs = self.read_back(figures["index"])
                        if len(docs) != self.args.rows:
                            raise RuntimeError(
                                f"{figures['index']} holds {len(docs):,} documents, "
                                f"not {self.args.rows:,}"
                            )
                        say(f"read {len(docs):,} documents back from {figures['index']}")
                    else:
                        n = self.count(figures["index"])
                        if n != self.args.rows:
                            raise RuntimeError(f"{figures['index']} holds {n:,} documents")
                    self.delete_index(figures["index"])
                else:
                    if not docs:  # a C first round needs documents: not with this order
                        raise RuntimeError("no documents to load for the ceiling")
                    ceilings.append(self.ceiling(round_no, docs))
                    self.delete_index(ceilings[-1]["index"])
        product_s = sum(p["seconds"] for p in products) / len(products)
        ceiling_s = sum(c["seconds"] for c in ceilings) / len(ceilings)
        sample = docs[0] if docs else None
        return {
            "rows": self.args.rows,
            "product": products,
            "ceiling": ceilings,
            "product_docs_per_s": self.args.rows / product_s,
            "ceiling_docs_per_s": self.args.rows / ceiling_s,
            "ratio": ceiling_s / product_s,
            "sample_document": {"_id": sample[0], "_version": sample[1], "_source": sample[2]}
            if sample
            else None,
        }

    # 2. live stream

    def live(
        self,
        load: LiveLoad | None = None,
        before_writes: Callable[[], None] | None = None,
        after_writes: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """`load` (by default --inserts/--updates/--deletes at --rate into bench_live)
        through a caught-up subscription. `before_writes` runs once it is caught up,
        `after_writes` as soon as the writer is done (bench/ceiling.py opens and marks a
        second slot there)."""
        a = self.args
        load = load or LiveLoad("bench_live", a.rate, a.inserts, a.updates, a.deletes)
        with psycopg.connect(self.source_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL(TABLE_DDL).format(table=sql.Identifier(load.table)))
        name = load.subscription
        sub = self.subscription(name, f"public.{load.table}", "discard")
        worker = self.start_worker(name)
        wait_until(
            self.watch(worker, sub, lambda s: s.status == "caught_up"),
            timeout=self.budget.cap(60),
            what=f"{name} to be caught up",
        )
        if before_writes is not None:
            before_writes()
        ops = plan_ops(load.inserts, load.updates, load.deletes, random.Random(11))
        total = len(ops)
        writer = Writer(self.source_dsn, load.table, ops, load.rate, load.synchronous_commit)
        self.writers.append(writer)
        say(f"{name}: writing {total:,} changes at {load.rate:,.0f}/s into {load.table}")
        writer.start()
        self.await_writer(writer, total)
        if writer.error is not None:
            raise RuntimeError(f"writer failed: {writer.error!r}")
        wrote_at = time.time()
        if after_writes is not None:
            after_writes()
        try:
            wait_until(
                lambda: worker.alive() and worker.progress().get("transactions", 0) >= total,
                timeout=self.budget.cap(90),
                what=f"{name} to acknowledge {total:,} transactions",
            )
        finally:
            drained_wait = time.time() - wrote_at
            result = worker.stop()
            self.retire(sub)
        latencies = sorted(float(x) for x in result.get("latencies", []))
        assert writer.first_at is not None and writer.last_at is not None
        write_s = max(writer.last_at - writer.first_at, 1e-9)
        acked = len(latencies)
        first_commit, last_ack = result.get("first_commit"), result.get("last_ack_at")
        ack_s = (last_ack - first_commit) if first_commit and last_ack else float("nan")
        figures: dict[str, Any] = {
            "changes": total,
            "inserts": load.inserts,
            "updates": load.updates,
            "deletes": load.deletes,
            "target_rate": load.rate,
            "write_rate": total / write_s,
            "write_seconds": write_s,
            "acked_transactions": acked,
            "ack_rate": acked / ack_s,
            "ack_seconds": ack_s,
            "drain_after_last_write_s": (last_ack - writer.last_at) if last_ack else None,
            "drain_wait_s": drained_wait,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p95_ms": percentile(latencies, 95) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
            "mean_ms": sum(latencies) / len(latencies) * 1000 if latencies else float("nan"),
            "batches": result.get("batches"),
            "peak_rss_bytes": result.get("peak_rss_bytes"),
            "sampled_peak_rss_bytes": worker.sampler.peak if worker.sampler else None,
            "ru_maxrss_bytes": result.get("ru_maxrss_bytes"),
            "stats": result.get("stats"),
            "time": breakdown(result.get("calls", []), writer.first_at, last_ack or wrote_at),
        }
        say(
            f"{name}: wrote {figures['write_rate']:,.0f}/s, acknowledged "
            f"{figures['ack_rate']:,.0f}/s in {figures['batches']} batches; commit→ack "
            f"p50 {figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms, "
            f"p99 {figures['p99_ms']:.0f} ms"
        )
        say(f"  where the worker's time went, {describe_breakdown(figures['time'])}")
        if acked != total:
            raise RuntimeError(f"the worker acknowledged {acked:,} of {total:,} transactions")
        return figures

    def await_writer(self, writer: Writer, total: int, stall: float = 30) -> None:
        """Wait for `writer` as long as it commits: on a busy machine one writer may take
        far longer than its rate says. BenchTimeout if `stall` seconds pass without a
        commit, or the budget ends."""
        done = -1
        while writer.is_alive():
            if writer.done == done:
                writer.stopping.set()
                writer.join(10)
                raise BenchTimeout(f"the writer wrote only {writer.done:,} of {total:,} changes")
            done = writer.done
            writer.join(self.budget.cap(stall))

    # 3. failures

    def prepare_failures(self, plan: failures.Plan) -> None:
        started = time.monotonic()
        with psycopg.connect(self.source_dsn, autocommit=True, connect_timeout=10) as conn:
            for variant in (failures.FAILING, failures.CLEAN):
                table = sql.Identifier(variant.table)
                conn.execute(sql.SQL(TABLE_DDL).format(table=table))
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN code text NOT NULL").format(table))
                fill_table(conn, variant.table, plan.rows, extra=("code", plan.codes(variant)))
        say(
            f"source tables {failures.FAILING.table} ({plan.rows:,} rows, {len(plan.bad):,} "
            f"with a code that is not a number) and {failures.CLEAN.table} (the same rows, "
            f"no bad code), made in {time.monotonic() - started:.1f} s"
        )

    def failure_run(
        self, variant: failures.Variant, round_no: int, plan: failures.Plan
    ) -> dict[str, Any]:
        """One timed backfill of the failures table, checked, then deleted with its index."""
        from syncer.models import DeadLetter, Subscription

        name = f"{PREFIX}failures-{variant.name}-{round_no}"
        figures = {
            "variant": variant.name,
            "round": round_no,
            **self.timed_snapshot(name, f"public.{variant.table}", failures.MAPPINGS),
        }
        dead_letters = list(
            DeadLetter.objects.filter(subscription_id=figures["subscription_id"]).values_list(
                "doc_id", "error_type"
            )
        )
        ids = self.index_ids(name)
        figures["check"] = failures.check(variant, plan, dead_letters, ids, figures["stats"])
        say(
            f"failures, {variant.name} #{round_no}: {plan.rows:,} docs in "
            f"{figures['seconds']:.1f} s = {figures['docs_per_s']:,.0f} docs/s; "
            f"{len(dead_letters):,} dead letters, {len(ids):,} documents indexed"
        )
        say(f"  where the worker's time went, {describe_breakdown(figures['time'])}")
        for problem in figures["check"]["problems"]:
            say(f"  WRONG: {problem}")
        self.delete_index(name)
        # Its dead letters go with it (cascade): the next failing run starts from none.
        Subscription.objects.filter(pk=figures["subscription_id"]).delete()
        if figures["rows"] != plan.rows:
            raise RuntimeError(f"the snapshot read {figures['rows']:,} rows, not {plan.rows:,}")
        return figures

    def failures(self) -> dict[str, Any]:
        a = self.args
        plan = failures.make_plan(a.failure_rows, a.failure_percent)
        self.prepare_failures(plan)
        runs = [
            self.failure_run(variant, round_no, plan)
            for round_no in range(1, a.rounds + 1)
            for variant in failures.order(round_no)
        ]
        figures = failures.summarize(plan, a.failure_percent, runs)
        say(
            f"failures: {figures['failing_docs_per_s']:,.0f} docs/s with "
            f"{len(plan.bad):,} of {plan.rows:,} failing, {figures['clean_docs_per_s']:,.0f} "
            f"docs/s with none: {figures['ratio']:.0%}"
        )
        return figures


def breakdown(calls: Sequence[Sequence[Any]], start: float, end: float) -> dict[str, Any]:
    """How the worker spent [start, end]: share, count and times of each timed call."""
    window = max(end - start, 1e-9)
    out: dict[str, Any] = {"window_s": window}
    methods = ("read", "write", "acknowledge", "save_checkpoint", "set_status", *DLQ_CALLS)
    for method in methods:
        picked = [
            (float(c[2]), int(c[3])) for c in calls if c[0] == method and start <= c[1] <= end
        ]
        if not picked:
            continue
        durations = sorted(d for d, _ in picked)
        items = sum(n for _, n in picked)
        out[method] = {
            "calls": len(picked),
            "share": sum(durations) / window,
            "mean_ms": sum(durations) / len(durations) * 1000,
            "p99_ms": percentile(durations, 99) * 1000,
            "max_ms": durations[-1] * 1000,
            "items": items,
            "ms_per_item": sum(durations) * 1000 / items if items else None,
        }
    return out


def describe_breakdown(b: dict[str, Any]) -> str:
    names = {
        "write": "bulk write",
        "read": "source read",
        "acknowledge": "slot advance",
        "save_checkpoint": "checkpoint save",
        "set_status": "status save",
        **DLQ_CALLS,
    }
    parts = []
    for method, label in names.items():
        m = b.get(method)
        if not m:
            continue
        if method in DLQ_CALLS and "dead_letters.put" not in b:
            continue  # nothing was dead-lettered: supersede returned at once
        text = f"{label} {m['share']:.0%} ({m['calls']} calls, mean {m['mean_ms']:.1f} ms"
        if method == "write" and m["ms_per_item"]:
            text += f", {m['ms_per_item']:.2f} ms/doc"
        parts.append(text + ")")
    return f"of {b['window_s']:.1f} s: " + ", ".join(parts)


DLQ_CALLS = {"dead_letters.put": "dead-letter save", "dead_letters.supersede": "supersede"}
"""The worker's timed calls to its dead-letter queue, and their labels."""


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    if not values:
        return float("nan")
    rank = max(1, -(-len(values) * pct // 100))
    return values[int(rank) - 1]


# -- report ----------------------------------------------------------------------------


def machine_note() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import osmem_server

    with psycopg.connect(ADMIN_DSN, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "postgres": row[0] if row else "?",
        "osmem_server": osmem_server.__version__,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def mb(value: Any) -> float:
    return float(value) / 1e6 if value else float("nan")


def loads(average: Sequence[float]) -> str:
    """A load average (os.getloadavg()) as '0.42 0.94 1.31'."""
    return " ".join(f"{x:.2f}" for x in average)


def print_load(results: dict[str, Any]) -> None:
    """The load average at a bench's start and end (`load_average_start`, `_end`)."""
    start, end = loads(results["load_average_start"]), loads(results["load_average_end"])
    print(f"load average {start} at start, {end} at end", flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    b = results.get("backfill")
    if b:
        per_round = ", ".join(f"{p['docs_per_s']:,.0f}" for p in b["product"])
        rows.append(
            (
                f"backfill, product ({b['rows']:,} rows)",
                f"{b['product_docs_per_s']:,.0f} docs/s  [{per_round}]",
                "",
                "",
            )
        )
        per_round = ", ".join(f"{c['docs_per_s']:,.0f}" for c in b["ceiling"])
        rows.append(
            (
                "backfill, ceiling (helpers.bulk)",
                f"{b['ceiling_docs_per_s']:,.0f} docs/s  [{per_round}]",
                "",
                "",
            )
        )
        rows.append(
            (
                "backfill, product / ceiling",
                f"{b['ratio']:.0%}",
                f">= {TARGET_RATIO:.0%}",
                verdict(b["ratio"] >= TARGET_RATIO),
            )
        )
        peak = max(mb(p["peak_rss_bytes"]) for p in b["product"])
        rows.append(("backfill, worker peak RSS", f"{peak:.0f} MB", "", ""))
    live = results.get("live")
    if live:
        keeps_up = (
            live["ack_rate"] >= 0.98 * live["target_rate"]
            and (live["drain_after_last_write_s"] or 0) < 2.0
        )
        rows += [
            (
                "live, write rate achieved",
                f"{live['write_rate']:,.0f} changes/s",
                f"{live['target_rate']:,.0f}/s",
                verdict(live["write_rate"] >= 0.98 * live["target_rate"]),
            ),
            (
                "live, acknowledged rate",
                f"{live['ack_rate']:,.0f} changes/s "
                f"(last ack {live['drain_after_last_write_s']:.2f} s after last write)",
                "keep up",
                verdict(keeps_up),
            ),
            ("live, commit→ack p50", f"{live['p50_ms']:.0f} ms", "", ""),
            ("live, commit→ack p95", f"{live['p95_ms']:.0f} ms", "", ""),
            (
                "live, commit→ack p99",
                f"{live['p99_ms']:.0f} ms (max {live['max_ms']:.0f})",
                f"<= {TARGET_P99_MS:.0f} ms",
                verdict(live["p99_ms"] <= TARGET_P99_MS),
            ),
            (
                "live, worker peak RSS",
                f"{mb(live['peak_rss_bytes']):.0f} MB VmHWM "
                f"(psutil {mb(live['sampled_peak_rss_bytes']):.0f} MB, "
                f"ru_maxrss {mb(live['ru_maxrss_bytes']):.0f} MB*)",
                f"<= {TARGET_RSS_MB:.0f} MB",
                verdict(mb(live["peak_rss_bytes"]) <= TARGET_RSS_MB),
            ),
        ]
    fails = results.get("failures")
    if fails:
        rows += failures.report_rows(fails)
    widths = [max(len(r[i]) for r in [*rows, HEADER]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print()
    print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(line)
    if live:
        print(f"reference: {PEER}")
    if b:
        print(f"backfill #1, worker time {describe_breakdown(b['product'][0]['time'])}")
    if live:
        print(f"live, worker time {describe_breakdown(live['time'])}")
    if fails:
        for run in (fails["failing"][0], fails["clean"][0]):
            print(
                f"failures, {run['variant']} #{run['round']}, worker time "
                f"{describe_breakdown(run['time'])}"
            )
    m = results["machine"]
    print(
        f"machine: {m['cores']} cores, {m['cpu']}, {m['memory_gb']} GB RAM; "
        f"Python {m['python']}; PostgreSQL {m['postgres']}; osmem-server {m['osmem_server']}; "
        f"load average at start {m['load_average']}"
    )
    if b or live:
        print(
            "MB = 10^6 bytes. *ru_maxrss survives execve on Linux, so it includes the bench "
            "parent's own peak; VmHWM is the worker's."
        )
    print(f"details: {results.get('results_file', '')}", flush=True)


# -- main ------------------------------------------------------------------------------


PHASES = ("backfill", "live", "failures")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="backfill rows")
    parser.add_argument("--rounds", type=int, default=2, help="product/ceiling pairs")
    parser.add_argument("--inserts", type=int, default=20_000)
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--deletes", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="live writes per second")
    parser.add_argument(
        "--failure-rows", type=int, default=30_000, help="rows of the failures phase's table"
    )
    parser.add_argument(
        "--failure-percent",
        type=float,
        default=1.0,
        help="share of those rows that OpenSearch rejects in the failing runs",
    )
    for phase in PHASES:
        parser.add_argument(f"--skip-{phase}", action="store_true")
    parser.add_argument(
        "--only",
        action="append",
        choices=PHASES,
        metavar="PHASE",
        help=f"run only this phase ({', '.join(PHASES)}); may be repeated",
    )
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.rows < 1 or args.rate <= 0 or args.failure_rows < 1:
        parser.error("--rounds, --rows, --failure-rows and --rate must be positive")
    if not 0 < args.failure_percent < 100:
        parser.error("--failure-percent must be between 0 and 100")
    if not selected(args):
        parser.error("no phase left to run")
    return args


def selected(args: argparse.Namespace) -> list[str]:
    """The phases to run, in order: --only's (or all of them), less the --skip-ed ones."""
    return [
        p for p in PHASES if (not args.only or p in args.only) and not getattr(args, f"skip_{p}")
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass
class Run:
    results: dict[str, Any] = field(default_factory=dict)

    def save(self) -> Path:
        return save_results("results", self.results)


def save_results(kind: str, results: dict[str, Any]) -> Path:
    """Write `results` to artifacts/bench/<kind>-<UTC time>.json; note the file in them."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = ARTIFACTS / f"{kind}-{stamp}.json"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    results["results_file"] = str(path.relative_to(ROOT))
    return path


def run_bench(
    kind: str, args: argparse.Namespace, measure: Callable[[dict[str, Any], Budget], None]
) -> tuple[int, dict[str, Any]]:
    """The frame of a bench script: `measure` fills the results (args and machine noted
    first) within `args.budget` seconds; a Ctrl-C, a SIGTERM or a failure ends it with
    what it has, saved as `kind`. Return the exit code and the results."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl-C
    results: dict[str, Any] = {"args": vars(args), "machine": machine_note()}
    code = 0
    try:
        measure(results, Budget(args.budget))
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    except (BenchTimeout, RuntimeError, psycopg.Error) as exc:
        say(f"failed: {exc}")
        code = 1
    path = save_results(kind, results)
    say(f"results in {path.relative_to(ROOT)} (subscriptions named {PREFIX}*)")
    return code, results


def phases(bench: Bench) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    run = {"backfill": bench.backfill, "live": bench.live, "failures": bench.failures}
    for name in selected(bench.args):
        yield name, run[name]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    run = Run({"started": dt.datetime.now(dt.UTC).isoformat(), "args": vars(args)})
    run.results["machine"] = machine_note()
    bench = Bench(args, Budget(args.budget))
    started = time.monotonic()
    code = 0
    try:
        bench.setup()
        for name, phase in phases(bench):
            run.results[name] = phase()
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        code = 130
    except (BenchTimeout, RuntimeError, psycopg.Error) as exc:
        say(f"failed: {exc}")
        code = 1
    finally:
        bench.teardown()
    run.results["seconds"] = time.monotonic() - started
    path = run.save()
    if code == 0:
        report(run.results)
    say(f"done in {run.results['seconds']:.0f} s; results in {path.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
