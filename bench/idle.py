"""The worker's idle cost (issue 15): `runsyncer` with 1, 20 and 100 caught-up
subscriptions and no changes.

    .venv/bin/python bench/idle.py [--counts 1,20,100] [--seconds 30] [--sink fast|osmem]
                                   [--background 0,200] [--shared-cluster] [--py-spy]

The source runs on a PostgreSQL cluster of the bench's own (bench/cluster.py): each
walsender sends a keepalive whenever the cluster's WAL moves, so other checkouts' tests
and benches writing to the machine's cluster would be measured as the worker's idle
cost. `--background R` (comma-separated, each a run of every count) commits R one-row
transactions a second into another database of that cluster during the window, as a
production source's other applications do; `--shared-cluster` uses the machine's.

For each count, on fresh source and console databases: that many tables (one per
subscription, snapshot mode `discard`), a fresh `manage.py runsyncer` (the product's
worker, not bench/worker.py), a wait until every subscription is caught up and a few
seconds of settling, then `--seconds` with no change written. Measured from /proc: the
worker's CPU (utime + stime of all its threads) as % of one core, its RSS (VmRSS) at the
window's end and its peak (VmHWM); and the CPU of the PostgreSQL backends connected to
the source database over the same window (the peek queries' cost on the server side).
`--py-spy` also records the worker with `py-spy record --format raw` over the window
and prints the share of samples in each top-level cost (the source's peek loop, the
checkpoint-hold recheck, status/heartbeat saves, stats publishing, the control loop).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ceiling import CeilingBench  # noqa: E402
from bench.cluster import Background, PrivateCluster  # noqa: E402
from bench.procfs import memory, pid_cpu  # noqa: E402
from bench.run import (  # noqa: E402
    ARTIFACTS,
    PREFIX,
    SOURCE_DB,
    TABLE_DDL,
    Budget,
    machine_note,
    mb,
    say,
    stop_process,
    wait_until,
)

# Frames that name a periodic cost in a py-spy stack, most specific first: the first
# one a stack holds is the part its sample is counted to.
PARTS = (
    ("peek loop (source read)", ("sources/postgres/",)),
    ("checkpoint-hold recheck", ("_recheck_hold",)),
    ("stats publishing", ("publish_stats", "_publish_stats")),
    ("heartbeat", ("_heartbeat",)),
    ("control loop", ("_control", "_refresh_live")),
    ("live feed", ("_feed_live", "offer_live_once", "syncer/live/")),
    ("status/checkpoint saves", ("set_status", "save_checkpoint", "syncer/stores.py")),
    ("pipeline read loop", ("_read",)),
    ("event loop", ("_run_once",)),
)
# Leaves py-spy samples though the thread waits (an idle pool thread, the loop's epoll):
# not CPU, so left out of the shares.
WAITING = ("_worker (concurrent/futures/thread.py:81)", "EpollSelector.select")


def source_backends(admin_dsn: str) -> list[int]:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (SOURCE_DB,),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def backends_cpu(pids: Sequence[int]) -> float:
    return sum(pid_cpu(pid) for pid in pids)  # a backend that ended counts 0


class IdleBench(CeilingBench):
    def tables(self, count: int) -> list[str]:
        names = [f"bench_idle_{n}" for n in range(count)]
        with psycopg.connect(self.source_dsn, autocommit=True, connect_timeout=10) as conn:
            for table in names:
                conn.execute(sql.SQL(TABLE_DDL).format(table=sql.Identifier(table)))
        return names

    def runsyncer(self, label: str) -> subprocess.Popen[bytes]:
        log = (ARTIFACTS / f"idle-{label}.log").open("wb")
        env = {**self.worker_env(), "LOG_LEVEL": "WARNING", "SECRET_KEY": "bench-idle-" * 4}
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runsyncer"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        return process

    def idle_once(
        self, count: int, seconds: float, profile: bool, background: float
    ) -> dict[str, Any]:
        from syncer.models import Subscription

        Subscription.objects.filter(name__startswith=PREFIX).delete()
        self.drop_source()
        with psycopg.connect(self.source_dsn.rsplit("/", 1)[0] + "/postgres") as conn:
            conn.autocommit = True
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SOURCE_DB)))
        names = []
        for table in self.tables(count):
            name = f"{PREFIX}{table.replace('_', '-')}"
            self.subscription(name, f"public.{table}", "discard")
            names.append(name)
        process = self.runsyncer(str(count))
        started = time.monotonic()
        load = Background(self.source_admin_dsn, background)
        try:

            def caught_up() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"runsyncer exited; see artifacts/bench/idle-{count}.log")
                ready = Subscription.objects.filter(name__in=names, status="caught_up").count()
                return ready == count

            wait_until(caught_up, timeout=self.budget.cap(300), what=f"{count} caught up")
            ready_s = time.monotonic() - started
            load.start()
            time.sleep(5)  # the first saves and the slots' first advances settle
            after_start = memory(process.pid)
            pids = source_backends(self.source_admin_dsn)
            spy: subprocess.Popen[bytes] | None = None
            raw = ARTIFACTS / f"idle-{count}-{background:g}.pyspy.txt"
            if profile:
                spy = subprocess.Popen(
                    [
                        shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(process.pid),
                        "--duration",
                        str(int(seconds)),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            cpu0, pg0, t0 = pid_cpu(process.pid), backends_cpu(pids), time.monotonic()
            time.sleep(seconds)
            cpu1, pg1, t1 = pid_cpu(process.pid), backends_cpu(pids), time.monotonic()
            end = memory(process.pid)
            if spy is not None:
                spy.wait(seconds + 30)
        finally:
            load.stop()
            stop_process(process)
        window = t1 - t0
        figures: dict[str, Any] = {
            "subscriptions": count,
            "background_commits_per_s": background,
            "ready_s": ready_s,
            "window_s": window,
            "cpu_pct": (cpu1 - cpu0) / window * 100,
            "cpu_pct_per_subscription": (cpu1 - cpu0) / window * 100 / count,
            "postgres_backends": len(pids),
            "postgres_cpu_pct": (pg1 - pg0) / window * 100,
            "rss_after_start_bytes": after_start.get("VmRSS"),
            "rss_end_bytes": end.get("VmRSS"),
            "peak_rss_bytes": end.get("VmHWM"),
        }
        if profile and raw.exists():
            figures["py_spy"] = shares(raw)
        say(
            f"idle {count}, background {background:g}/s: "
            f"worker {figures['cpu_pct']:.1f} % of a core "
            f"({figures['cpu_pct_per_subscription']:.2f} % per subscription), "
            f"PostgreSQL {len(pids)} backends {figures['postgres_cpu_pct']:.1f} %, "
            f"RSS {mb(figures['rss_end_bytes']):.0f} MB (peak {mb(figures['peak_rss_bytes']):.0f})"
        )
        return figures


def shares(raw: Path) -> dict[str, float]:
    """Share of py-spy's samples per part (PARTS), from its raw (collapsed) output."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if any(frames[-1].startswith(leaf) for leaf in WAITING):
            continue
        total += int(n)
        part = "other"
        for label, needles in PARTS:
            if any(needle in frame for frame in frames for needle in needles):
                part = label
                break
        counts[part] += int(n)
    return {part: n / total for part, n in counts.most_common()} if total else {}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--counts", default="1,20,100", help="subscription counts, in order")
    parser.add_argument("--seconds", type=float, default=30.0, help="the idle window")
    parser.add_argument("--sink", choices=("fast", "osmem"), default="fast")
    parser.add_argument("--py-spy", action="store_true", help="profile each window")
    parser.add_argument(
        "--background",
        default="0",
        help="commits/s into another database of the source cluster (comma-separated)",
    )
    parser.add_argument(
        "--shared-cluster",
        action="store_true",
        help="the source on the machine's PostgreSQL, not a cluster of the bench's own",
    )
    parser.add_argument(
        "--fast-bulk-delay-ms", type=float, default=0.0, help="the fast sink's delay per bulk"
    )
    parser.add_argument("--budget", type=float, default=900.0)
    args = parser.parse_args(argv)
    args.counts = [int(c) for c in args.counts.split(",")]
    args.background = [float(r) for r in args.background.split(",")]
    args.fast_bulk_delay_ms = 0.0  # CeilingBench's fast sink reads it; an idle worker sends none
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    bench = IdleBench(args, budget)
    bench.sink = args.sink
    results: dict[str, Any] = {"args": vars(args), "machine": machine_note(), "runs": []}
    results["load_average_start"] = os.getloadavg()
    code = 0
    with contextlib.ExitStack() as stack:
        if not args.shared_cluster:
            cluster = stack.enter_context(PrivateCluster())
            bench.source_admin_dsn = cluster.dsn()
            bench.source_dsn = cluster.dsn(SOURCE_DB)
            say(f"source: a PostgreSQL cluster of the bench's own on port {cluster.port}")
        try:
            bench.setup()
            for background in args.background:
                for count in args.counts:
                    results["runs"].append(
                        bench.idle_once(count, args.seconds, args.py_spy, background)
                    )
        except KeyboardInterrupt:
            code = 130
        except (RuntimeError, psycopg.Error, subprocess.CalledProcessError) as exc:
            say(f"failed: {exc}")
            code = 1
        finally:
            bench.teardown()
    results["load_average_end"] = os.getloadavg()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = ARTIFACTS / f"idle-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print()
    print("subs  bg/s  worker CPU %  per sub %  PG backends  PG CPU %  RSS MB  peak MB  ready s")
    for r in results["runs"]:
        print(
            f"{r['subscriptions']:>4}  {r['background_commits_per_s']:>4g}"
            f"  {r['cpu_pct']:>11.1f}  {r['cpu_pct_per_subscription']:>9.2f}"
            f"  {r['postgres_backends']:>11}  {r['postgres_cpu_pct']:>8.1f}"
            f"  {mb(r['rss_end_bytes']):>6.0f}  {mb(r['peak_rss_bytes']):>7.0f}"
            f"  {r['ready_s']:>7.1f}"
        )
        if "py_spy" in r:
            top = ", ".join(f"{k} {v:.0%}" for k, v in r["py_spy"].items())
            print(f"      py-spy: {top}")
    m = results["machine"]
    print(f"machine: {m['cores']} cores, {m['cpu']}; load {results['load_average_start']}")
    print(f"details: {path.relative_to(ROOT)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
