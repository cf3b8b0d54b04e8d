"""The resumable copy (issue 16): how long a large copy takes with restarts during it,
and how long live changes wait while it runs. (Not `copy.py`: run as a script, it would
hide the standard library's `copy`.)

    .venv/bin/python bench/copy_restarts.py [--sink fast|osmem] [--rows 1000000]
                                            [--kills 3] [--lag-sink osmem --lag-sink fast]
                                            [--lag-rows 100000] [--rate 300]
                                            [--only restarts,lag]

1. restarts: bench/run.py's realistic table of `--rows` rows is copied by a real worker
   process (bench/worker.py, built as `runsyncer` builds it) twice, into `--sink`: once
   undisturbed, once killed with SIGKILL (kill -9) when the copy's saved cursor passes
   each of `--kills` evenly spaced points and started again at once. Both are timed from
   the first worker's start to `snapshot_completed_at`; each restart must go on from its
   cursor (`copy_resumed` in its log, rows > 0), and the index must hold every row.
2. lag: for each `--lag-sink`, a table of `--lag-rows` rows is copied while a writer
   commits `--rate` changes a second into it (one per transaction: updates of random
   copied and uncopied rows, inserts of new ones): commit→acknowledged latency of the
   changes committed during the copy (p50/p95/p99/max), and the copy's rows/s.

Own databases (BENCH_DB_SUFFIX), own sinks; slots, workers and sinks are cleaned up on
exit. docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ceiling import SINKS, CeilingBench
from bench.run import (
    PREFIX,
    TABLE_DDL,
    Budget,
    Worker,
    Writer,
    fill_table,
    percentile,
    run_bench,
    say,
    wait_until,
)

TABLE = "bench_copy"


class CopyBench(CeilingBench):
    def make_table(self, table: str, rows: int) -> None:
        started = time.monotonic()
        with psycopg.connect(self.source_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            conn.execute(sql.SQL(TABLE_DDL).format(table=sql.Identifier(table)))
            fill_table(conn, table, rows)
        say(f"source table {table}: {rows:,} rows, made in {time.monotonic() - started:.1f} s")

    def copied(self, sub: Any) -> int:
        sub.refresh_from_db()
        return _rows(sub)

    def copy_run(self, name: str, rows: int, kills: int) -> dict[str, Any]:
        """Copy `TABLE` into a new index; kill -9 the worker at `kills` evenly spaced
        points of the copy, restarting it at once."""
        sub = self.subscription(name, f"public.{TABLE}", "index")
        started = time.time()
        worker = self.start_worker(name)
        resumed: list[dict[str, Any]] = []
        killed_at: list[int] = []
        for k in range(1, kills + 1):
            point = rows * k // (kills + 1)
            wait_until(
                self.watch(worker, sub, _passed(point)),
                timeout=self.budget.cap(600),
                what=f"{name}'s copy to pass {point:,} rows",
                interval=0.05,
            )
            if sub.snapshot_completed_at:
                break
            assert worker.process is not None
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(10)
            killed_at.append(self.copied(sub))
            say(f"{name}: kill -9 at {killed_at[-1]:,} rows copied (saved cursor)")
            worker = self.restart(worker, resumed)
        completed = wait_until(
            self.watch(worker, sub, lambda s: s.snapshot_completed_at),
            timeout=self.budget.cap(900),
            what=f"{name}'s copy to complete",
            interval=0.1,
        )
        seconds = completed.timestamp() - started
        result = worker.stop()
        resumed += _events(worker.log, "copy_resumed")
        held = self.count(name)
        self.retire(sub)
        self.delete_index(name)
        if held != rows:
            raise RuntimeError(f"{name} holds {held:,} documents of {rows:,}")
        if len(resumed) != len(killed_at) or any(r["rows"] <= 0 for r in resumed):
            raise RuntimeError(f"{name}: a restart did not go on from its cursor: {resumed}")
        return {
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "kills": len(killed_at),
            "killed_at_rows": killed_at,
            "resumed_at_rows": [r["rows"] for r in resumed],
            "rows_copied_last_session": result.get("snapshot_rows"),
        }

    def restart(self, killed: Worker, resumed: list[dict[str, Any]]) -> Worker:
        """The same subscription in a new worker (its log would be overwritten: keep
        what the killed one said first)."""
        resumed += _events(killed.log, "copy_resumed")
        return self.start_worker(killed.name)

    def lag_run(self, name: str, rows: int, rate: float) -> dict[str, Any]:
        """Copy a `rows`-row table while a writer commits `rate` changes/s into it."""
        table = f"{TABLE}_lag"
        self.make_table(table, rows)
        rng = random.Random(16)
        ops = [
            ("I", rows + n + 1) if n % 3 == 0 else ("U", rng.randrange(1, rows + 1))
            for n in range(int(rate * 3600))
        ]
        sub = self.subscription(name, f"public.{table}", "index")
        started = time.time()
        worker = self.start_worker(name)
        wait_until(
            self.watch(worker, sub, lambda s: s.status == "snapshotting"),
            timeout=self.budget.cap(60),
            what=f"{name} to start copying",
        )
        writer = Writer(self.source_dsn, table, ops, rate)
        self.writers.append(writer)
        writer.start()
        try:
            completed = wait_until(
                self.watch(worker, sub, lambda s: s.snapshot_completed_at),
                timeout=self.budget.cap(900),
                what=f"{name}'s copy to complete",
                interval=0.1,
            )
        finally:
            writer.stopping.set()
            writer.join(10)
        end = completed.timestamp()
        wait_until(
            lambda: worker.progress().get("transactions", 0) >= writer.done,
            timeout=self.budget.cap(60),
            what=f"{name} to acknowledge the writer's changes",
        )
        result = worker.stop()
        self.retire(sub)
        self.delete_index(name)
        during = sorted(
            latency
            for latency, commit in zip(result["latencies"], result["commit_times"], strict=True)
            if commit <= end
        )
        seconds = end - started
        return {
            "rows": rows,
            "rate": rate,
            "changes_during_copy": len(during),
            "copy_seconds": seconds,
            "copy_rows_per_s": rows / seconds,
            "p50_ms": percentile(during, 50) * 1000,
            "p95_ms": percentile(during, 95) * 1000,
            "p99_ms": percentile(during, 99) * 1000,
            "max_ms": during[-1] * 1000 if during else float("nan"),
        }


def _passed(point: int) -> Any:
    """A check for Bench.watch: the copy completed, or its cursor passed `point` rows."""

    def check(sub: Any) -> bool:
        return bool(sub.snapshot_completed_at) or _rows(sub) >= point

    return check


def _rows(sub: Any) -> int:
    """Rows the copy's saved cursor says are copied."""
    return int((sub.source_state or {}).get("copy", {}).get("rows", 0))


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def run_restarts(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    bench = CopyBench(args, budget)
    bench.sink = args.sink
    figures: dict[str, Any] = {"sink": args.sink, "load_average_start": os.getloadavg()}
    try:
        bench.setup()
        bench.make_table(TABLE, args.rows)
        # Undisturbed, restarted, undisturbed again: the machine's speed drifts.
        for label, kills in (("plain", 0), ("restarted", args.kills), ("plain_again", 0)):
            run = bench.copy_run(f"{PREFIX}copy-{label}", args.rows, kills)
            say(
                f"{label}: {args.rows:,} rows in {run['seconds']:.1f} s "
                f"({run['rows_per_s']:,.0f} rows/s), {run['kills']} kill(s), resumed at "
                f"{run['resumed_at_rows']}"
            )
            figures[label] = run
    finally:
        bench.teardown()
    figures["load_average_end"] = os.getloadavg()
    plain = (figures["plain"]["seconds"] + figures["plain_again"]["seconds"]) / 2
    figures["restarted_over_plain"] = figures["restarted"]["seconds"] / plain
    return figures


def run_lag(sink: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    bench = CopyBench(args, budget)
    bench.sink = sink
    figures: dict[str, Any] = {"load_average_start": os.getloadavg()}
    try:
        bench.setup()
        figures.update(bench.lag_run(f"{PREFIX}copy-lag", args.lag_rows, args.rate))
    finally:
        bench.teardown()
    figures["load_average_end"] = os.getloadavg()
    say(
        f"lag on {sink}: {figures['changes_during_copy']:,} changes during a copy of "
        f"{args.lag_rows:,} rows ({figures['copy_rows_per_s']:,.0f} rows/s): p50 "
        f"{figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms, p99 "
        f"{figures['p99_ms']:.0f} ms, max {figures['max_ms']:.0f} ms"
    )
    return figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sink", choices=SINKS, default="fast", help="for the restarts")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--lag-sink", action="append", choices=SINKS)
    parser.add_argument("--lag-rows", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=300.0, help="live changes/s in the copy")
    parser.add_argument("--only", default="restarts,lag")
    parser.add_argument("--budget", type=float, default=3000.0)
    parser.add_argument("--fast-bulk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    args.lag_sink = args.lag_sink or ["osmem", "fast"]
    args.only = args.only.split(",")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def measure(results: dict[str, Any], budget: Budget) -> None:
        if "restarts" in args.only:
            results["restarts"] = run_restarts(args, budget)
            r = results["restarts"]
            say(f"restarted / undisturbed: {r['restarted_over_plain']:.3f} (target: within 10%)")
        if "lag" in args.only:
            results["lag"] = {sink: run_lag(sink, args, budget) for sink in args.lag_sink}

    return run_bench("copy", args, measure)[0]


if __name__ == "__main__":
    sys.exit(main())
