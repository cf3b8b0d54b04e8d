"""A shared copy (issue 16, SYNCER_COPY_SHARED) by one worker and by two.

    .venv/bin/python bench/copy_workers.py [--sink fast --sink osmem] [--rows 300000]
                                           [--range-rows 20000]

For each `--sink`, bench/run.py's realistic table of `--rows` rows is copied into a new
index four times by real `runsyncer` processes: by one worker copying it itself
(SYNCER_COPY_SHARED off: the in-stream chunked copy), then shared (ranges of
`--range-rows`) by one worker, by two, and by one again (the machine's speed drifts).
The workers are started and left to settle before the subscription exists, so neither
the time nor the CPU counts their start-up: the time runs from the subscription's
creation to `snapshot_completed_at`, the CPU is the workers' own (utime + stime, from
/proc) over the same span, divided by the rows. The index must hold every row.

Own databases (BENCH_DB_SUFFIX), own sinks; cleaned up on exit. docs/benchmarks.md
records the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ceiling import SINKS
from bench.copy_restarts import TABLE, CopyBench
from bench.procfs import pid_cpu
from bench.run import (
    ARTIFACTS,
    PREFIX,
    ROOT,
    Budget,
    run_bench,
    say,
    stop_process,
    wait_until,
)

SETTLE_SECONDS = 3.0
"""How long a new worker is left alone before its CPU is read: its imports are done."""


class SharedCopyBench(CopyBench):
    def shared_run(self, name: str, rows: int, workers: int, shared: bool) -> dict[str, Any]:
        env = {
            **self.worker_env(),
            "SYNCER_COPY_SHARED": "1" if shared else "0",
            "SYNCER_COPY_RANGE_ROWS": str(self.args.range_rows),
        }
        processes = [self._runsyncer(name, i, env) for i in range(workers)]
        try:
            time.sleep(SETTLE_SECONDS)
            for process in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a worker of {name} exited: see {self._log(name, 0)}")
            cpu_before = [pid_cpu(p.pid) for p in processes]
            started = time.time()
            sub = self.subscription(name, f"public.{TABLE}", "index")
            completed = wait_until(
                lambda: _completed(sub),
                timeout=self.budget.cap(900),
                what=f"{name}'s copy to complete",
                interval=0.05,
            )
            cpu = sum(pid_cpu(p.pid) - b for p, b in zip(processes, cpu_before, strict=True))
        finally:
            for process in processes:
                stop_process(process)
        seconds = completed.timestamp() - started
        held = self.count(name)
        self.retire(sub)
        sub.delete()  # the next run's workers must not run it
        self.delete_index(name)
        if held != rows:
            raise RuntimeError(f"{name} holds {held:,} documents of {rows:,}")
        return {
            "workers": workers,
            "shared": shared,
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "cpu_seconds": cpu,
            "cpu_us_per_row": cpu / rows * 1e6,
        }

    def _runsyncer(self, name: str, i: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self._log(name, i).open("wb") as log:
            return subprocess.Popen(
                # Every subscription: the one to copy is made once they have settled.
                [sys.executable, "manage.py", "runsyncer", "--no-live"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @staticmethod
    def _log(name: str, i: int) -> Path:
        return ARTIFACTS / f"{name}-worker{i}.log"


def _completed(sub: Any) -> Any:
    sub.refresh_from_db()
    if sub.status == "error":
        raise RuntimeError(f"subscription {sub.name} failed: {sub.last_error}")
    return sub.snapshot_completed_at


RUNS = (
    ("own", 1, False),
    ("shared_1", 1, True),
    ("shared_2", 2, True),
    ("shared_1_again", 1, True),
)


def run_sink(sink: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    bench = SharedCopyBench(args, budget)
    bench.sink = sink
    figures: dict[str, Any] = {"load_average_start": os.getloadavg()}
    try:
        bench.setup()
        bench.make_table(TABLE, args.rows)
        for label, workers, shared in RUNS:
            run = bench.shared_run(
                f"{PREFIX}workers-{label}".replace("_", "-"), args.rows, workers, shared
            )
            say(
                f"{sink} {label}: {args.rows:,} rows in {run['seconds']:.1f} s "
                f"({run['rows_per_s']:,.0f} rows/s), {run['cpu_us_per_row']:.0f} µs CPU/row"
            )
            figures[label] = run
    finally:
        bench.teardown()
    figures["load_average_end"] = os.getloadavg()
    one = (figures["shared_1"]["seconds"] + figures["shared_1_again"]["seconds"]) / 2
    figures["two_over_one"] = figures["shared_2"]["seconds"] / one
    figures["shared_1_over_own"] = one / figures["own"]["seconds"]
    say(
        f"{sink}: two workers take {figures['two_over_one']:.2f}x one's time; shared with "
        f"one worker {figures['shared_1_over_own']:.2f}x its own copy"
    )
    return figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sink", action="append", choices=SINKS)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--range-rows", type=int, default=20_000)
    parser.add_argument("--budget", type=float, default=3000.0)
    parser.add_argument("--fast-bulk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    args.sink = args.sink or ["fast", "osmem"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def measure(results: dict[str, Any], budget: Budget) -> None:
        results["sinks"] = {sink: run_sink(sink, args, budget) for sink in args.sink}

    return run_bench("copy_workers", args, measure)[0]


if __name__ == "__main__":
    sys.exit(main())
