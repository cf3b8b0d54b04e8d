"""The worker's own ceiling (issue 15, item 1): bench/run.py's backfill and live
workloads against osmem and against a bulk endpoint that is never the bottleneck, with
PostgreSQL's own decoding rate of the same WAL measured in the same run.

    .venv/bin/python bench/ceiling.py [--sink osmem] [--sink fast] [--rows 100000]
                                      [--inserts 20000 --updates 10000 --deletes 5000]
                                      [--rate 100000] [--fixed-rate 300 --fixed-rate 1000]
                                      [--fixed-seconds 20] [--bulk-concurrency 1 ...]
                                      [--only backfill,live,backlog,fixed]

For each `--sink` (default osmem alone; repeat it to run several in one run, in order),
on fresh source and console databases, in this order:

1. backfill: `--rows` realistic rows (snapshot mode `index`, as bench/run.py's product
   backfill);
2. live: bench/run.py's live phase (`--rate` per second, by default as fast as its one
   writer commits, so its rate is the writer's when the worker keeps up), the writer
   committing with synchronous_commit off so that the disk's fsyncs do not bound it
   (its latency then includes the WAL writer's flush, up to wal_writer_delay);
3. backlog: the same live workload written (synchronous_commit off) while the worker is
   stopped, then drained by a new one (the worker's own rate);
4. fixed rates: for each `--fixed-rate R` (default 300 and 1000), the live workload's mix
   of inserts, updates and deletes, R times `--fixed-seconds` changes, committed at R per
   second by bench/run.py's writer into a table of its own (bench_fixed_R), each commit
   waiting for its flush, as an application's does.

`fast` is bench/fastsink.py, in its own process: it parses every `_bulk` body and
answers every item as done, so what is measured is the worker (never a test of
OpenSearch). `--bulk-concurrency N` (repeatable) runs each sink once per N with
SYNCER_BULK_CONCURRENCY=N, in order, named `sink xN`; `--fast-bulk-delay-ms` makes the
fast sink answer each bulk that much later (a cluster's latency, which bulks in flight
overlap).

Per workload: changes/s (backfill: rows over the pipeline's run to the snapshot's end,
without the process start-up; live and fixed rates: acknowledged changes over first
commit to last acknowledgement; backlog: from the first to the last acknowledgement),
the worker's CPU per 1,000 changes (its process CPU clock, utime + stime of all its
threads as in /proc/<pid>/stat, read by bench/worker.py at the pipeline's start, the
snapshot's end and the first and last acknowledgement of live changes; at a fixed rate
this includes the idle polling between changes; `gc_s` in the results file is the CPU of
its garbage collector over its whole run), and its peak RSS (VmHWM). Live and
fixed rates: commit → acknowledged p50/p99 over every transaction, from its commit
timestamp on the source to the worker's acknowledgement (checkpoint saved after the
sink answered), as bench/worker.py records it.

PostgreSQL's own decoding (bench/decoding.py): for the live and the backlog workloads, a
second pgoutput slot with its own publication of the same table, created before the
writes, is decoded up to the writes' end once the worker has stopped, first by
`pg_logical_slot_peek_binary_changes` in one SQL call (with that backend's CPU), then by
`pg_recvlogical` to /dev/null over the replication protocol; each gives changes/s, and
the worker's rate in that workload is printed as a share of each. The slot and the
publication are dropped afterwards. The idle cost is bench/idle.py's.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.decoding import DecodingProbe, describe  # noqa: E402
from bench.run import (  # noqa: E402
    ARTIFACTS,
    DB_SUFFIX,
    PREFIX,
    TABLE_DDL,
    Bench,
    Budget,
    LiveLoad,
    Writer,
    loads,
    mb,
    plan_ops,
    run_bench,
    say,
    wait_until,
)

SINKS = ("osmem", "fast")


@dataclass
class FastSink:
    """bench/fastsink.py in a process of its own (the shape Bench.teardown closes)."""

    process: subprocess.Popen[bytes]
    url: str
    version: str = "fastsink"

    @classmethod
    def start(cls, bulk_delay_ms: float = 0.0) -> FastSink:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = (ARTIFACTS / "fastsink.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "fastsink.py"),
                "--port",
                str(port),
                "--bulk-delay-ms",
                str(bulk_delay_ms),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        sink = cls(process, f"http://127.0.0.1:{port}")
        wait_until(sink.answers, timeout=15, what="bench/fastsink.py to listen")
        return sink

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("bench/fastsink.py exited; see artifacts/bench/fastsink.log")
        try:
            with socket.create_connection(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), 1):
                return True
        except OSError:
            return False

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class CeilingBench(Bench):
    sink: str = "osmem"
    bulk_concurrency: int = 1

    def worker_env(self) -> dict[str, str]:
        return {**super().worker_env(), "SYNCER_BULK_CONCURRENCY": str(self.bulk_concurrency)}

    def start_sink(self) -> None:
        if self.sink == "osmem":
            super().start_sink()
            return
        self.server = FastSink.start(self.args.fast_bulk_delay_ms)
        self.opensearch_url = self.server.url
        say(f"bench/fastsink.py at {self.opensearch_url}")

    def backfill_once(self) -> dict[str, Any]:
        self.prepare_backfill()
        figures = self.product_backfill(1)
        result = self.workers[-1].result
        held = self.count(figures["index"])
        if held != self.args.rows:
            raise RuntimeError(f"{figures['index']} holds {held:,} documents")
        self.delete_index(figures["index"])
        rows = figures["rows"]
        cpu = result["cpu_snapshot_done"] - result["cpu_pipeline_started"]
        return {
            "changes": rows,
            "changes_per_s": rows / figures["pipeline_seconds"],
            "docs_per_s_from_process_start": figures["docs_per_s"],
            "cpu_s": cpu,
            "cpu_ms_per_1000": cpu / rows * 1e6,
            "cpu_total_s": result.get("cpu_total"),
            "gc_s": result.get("gc_seconds"),
            "peak_rss_bytes": figures["peak_rss_bytes"],
        }

    def probe(self, table: str) -> DecodingProbe:
        """A second slot on `table`, named apart from other benches' (BENCH_DB_SUFFIX)."""
        suffix = "".join(c if c.isalnum() else "_" for c in DB_SUFFIX.lower())
        return DecodingProbe(self.source_dsn, table, f"bench_decoding_{table}{suffix}"[:63])

    def live_once(self, load: LiveLoad | None = None, decode: bool = False) -> dict[str, Any]:
        """bench/run.py's live phase with `load`; with `decode`, PostgreSQL's own decoding
        of the same WAL (bench/decoding.py), measured once the worker has stopped."""
        table = load.table if load else "bench_live"
        probe = self.probe(table) if decode else None
        try:
            figures = self.live(
                load,
                before_writes=probe.open if probe else None,
                after_writes=probe.mark_end if probe else None,
            )
            decoding = probe.measure(figures["changes"]) if probe else None
        finally:
            if probe:
                probe.close()
        result = self.workers[-1].result
        changes = int(result["changes"]) - int(result["changes_first_ack"])
        cpu = result["cpu_last_ack"] - result["cpu_first_ack"]
        return {
            "changes": figures["changes"],
            "changes_per_s": figures["ack_rate"],
            "write_rate": figures["write_rate"],
            "target_rate": figures["target_rate"],
            "cpu_s": cpu,
            "cpu_ms_per_1000": cpu / changes * 1e6,
            "cpu_total_s": result.get("cpu_total"),
            "gc_s": result.get("gc_seconds"),
            "peak_rss_bytes": figures["peak_rss_bytes"],
            "batches": figures["batches"],
            "p50_ms": figures["p50_ms"],
            "p99_ms": figures["p99_ms"],
            "max_ms": figures["max_ms"],
            "decoding": decoding,
        }

    def unthrottled(self) -> LiveLoad:
        """bench/run.py's live workload, committed without waiting for the WAL flush: one
        writer's fsyncs (200-2,500 a second on these machines) must not bound the worker."""
        a = self.args
        return LiveLoad("bench_live", a.rate, a.inserts, a.updates, a.deletes, False)

    def fixed_once(self, rate: float) -> dict[str, Any]:
        """The live workload's mix, `--fixed-seconds` of it, committed at `rate` per second."""
        a = self.args
        total = round(rate * a.fixed_seconds)
        mix = a.inserts + a.updates + a.deletes
        updates, deletes = total * a.updates // mix, total * a.deletes // mix
        load = LiveLoad(f"bench_fixed_{rate:g}", rate, total - updates - deletes, updates, deletes)
        return self.live_once(load)

    def backlog_once(self) -> dict[str, Any]:
        """The live workload written while the worker is stopped, then drained by a new
        one: its rate is the worker's own, not the writer's."""
        a = self.args
        with psycopg.connect(self.source_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL(TABLE_DDL).format(table=sql.Identifier("bench_backlog")))
        name = f"{PREFIX}backlog"
        sub = self.subscription(name, "public.bench_backlog", "discard")
        worker = self.start_worker(name)
        wait_until(
            self.watch(worker, sub, lambda s: s.status == "caught_up"),
            timeout=self.budget.cap(60),
            what=f"{name} to be caught up",
        )
        worker.stop()
        ops = plan_ops(a.inserts, a.updates, a.deletes, random.Random(11))
        total = len(ops)
        writer = Writer(self.source_dsn, "bench_backlog", ops, a.rate, synchronous_commit=False)
        probe = self.probe("bench_backlog")
        try:
            probe.open()
            writer.run()  # in this thread: the worker is stopped meanwhile
            if writer.error is not None:
                raise RuntimeError(f"writer failed: {writer.error!r}")
            probe.mark_end()
            # Before the drain, so that PostgreSQL and the worker never share the cores.
            decoding = probe.measure(total)
        finally:
            probe.close()
        say(
            f"backlog: {total:,} changes written with the worker stopped; PostgreSQL "
            f"decodes them at {decoding['peek_changes_per_s']:,.0f}/s (peek), "
            f"{decoding['recvlogical_changes_per_s']:,.0f}/s (pg_recvlogical); draining them"
        )
        worker = self.start_worker(name)
        try:
            wait_until(
                self.watch(
                    worker, sub, lambda _: worker.progress().get("transactions", 0) >= total
                ),
                timeout=self.budget.cap(240),
                what=f"{name} to acknowledge {total:,} transactions",
            )
        finally:
            result = worker.stop()
            self.retire(sub)
        changes = int(result["changes"]) - int(result["changes_first_ack"])
        cpu = result["cpu_last_ack"] - result["cpu_first_ack"]
        seconds = result["last_ack_at"] - result["first_ack_at"]
        figures = {
            "changes": total,
            "changes_per_s": changes / seconds,
            "cpu_s": cpu,
            "cpu_ms_per_1000": cpu / changes * 1e6,
            "cpu_total_s": result.get("cpu_total"),
            "gc_s": result.get("gc_seconds"),
            "peak_rss_bytes": result.get("peak_rss_bytes"),
            "batches": result.get("batches"),
            "decoding": decoding,
        }
        say(
            f"backlog: drained {figures['changes_per_s']:,.0f} changes/s in "
            f"{figures['batches']} batches, {figures['cpu_ms_per_1000']:.1f} ms CPU per 1,000"
        )
        return figures


WORKLOADS = ("backfill", "live", "backlog", "fixed")


def run_sink(
    sink: str, args: argparse.Namespace, budget: Budget, bulk_concurrency: int = 1
) -> dict[str, Any]:
    bench = CeilingBench(args, budget)
    bench.sink = sink
    bench.bulk_concurrency = bulk_concurrency
    figures: dict[str, Any] = {"load_average_start": os.getloadavg()}
    try:
        bench.setup()
        if "backfill" in args.only:
            figures["backfill"] = bench.backfill_once()
        if "live" in args.only:
            figures["live"] = bench.live_once(bench.unthrottled(), decode=True)
        if "backlog" in args.only:
            figures["backlog"] = bench.backlog_once()
        if "fixed" in args.only:
            figures["fixed"] = [bench.fixed_once(rate) for rate in args.fixed_rate]
    finally:
        bench.teardown()
    figures["load_average_end"] = os.getloadavg()
    return figures


def workloads(figures: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, figures) of one sink's workloads, in the order they ran."""
    fixed = [(f"{w['target_rate']:g}/s", w) for w in figures.get("fixed", [])]
    return [(w, figures[w]) for w in ("backfill", "live", "backlog") if w in figures] + fixed


def report(results: dict[str, Any]) -> None:
    print()
    print(
        "sink       workload  changes  changes/s  worker CPU ms / 1,000  peak RSS  "
        "commit→ack p50 / p99"
    )
    for sink, figures in results["sinks"].items():
        for workload, w in workloads(figures):
            latency = f"{w['p50_ms']:>6.0f} / {w['p99_ms']:.0f} ms" if "p50_ms" in w else ""
            print(
                f"{sink:<10} {workload:<9} {w['changes']:>7,} {w['changes_per_s']:>10,.0f}  "
                f"{w['cpu_ms_per_1000']:>21.1f}  {mb(w['peak_rss_bytes']):>5.0f} MB  {latency}"
            )
    print()
    for sink, figures in results["sinks"].items():
        for workload in ("live", "backlog"):
            if workload in figures:
                w = figures[workload]
                print(f"{sink:<10} {workload:<8} {describe(w['decoding'], w['changes_per_s'])}")
        live = figures.get("live")
        if live is None:
            continue
        print(
            f"{sink:<10} live: writer {live['write_rate']:,.0f}/s, {live['batches']} batches; "
            f"load average {loads(figures['load_average_start'])} → "
            f"{loads(figures['load_average_end'])}"
        )
    m = results["machine"]
    print(
        f"machine: {m['cores']} cores, {m['cpu']}; Python {m['python']}; "
        f"PostgreSQL {m['postgres']}; osmem-server {m['osmem_server']}"
    )
    print(f"details: {results['results_file']}", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--sink",
        action="append",
        choices=SINKS,
        help="osmem or fast (bench/fastsink.py); repeat to run both in one run",
    )
    parser.add_argument("--rows", type=int, default=100_000, help="backfill rows")
    parser.add_argument("--inserts", type=int, default=20_000)
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--deletes", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=100_000.0, help="live writes per second")
    parser.add_argument(
        "--fixed-rate",
        action="append",
        type=float,
        help="also run the live mix committed at this rate per second (repeatable; "
        "default 300 and 1000)",
    )
    parser.add_argument(
        "--fixed-seconds",
        type=float,
        default=20.0,
        help="how long each --fixed-rate run writes",
    )
    parser.add_argument("--budget", type=float, default=1500.0, help="seconds for the whole run")
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"the workloads to run, comma-separated, of {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--fast-bulk-delay-ms",
        type=float,
        default=0.0,
        help="latency of each fast-sink bulk answer, as a cluster's (bulks in flight overlap it)",
    )
    parser.add_argument(
        "--bulk-concurrency",
        action="append",
        type=int,
        help="SYNCER_BULK_CONCURRENCY for the worker; repeat to run each sink once per value",
    )
    args = parser.parse_args(argv)
    args.sink = args.sink or ["osmem"]
    args.only = args.only.split(",")
    if not set(args.only) <= set(WORKLOADS):
        parser.error(f"--only takes {', '.join(WORKLOADS)}")
    args.bulk_concurrency = args.bulk_concurrency or [1]
    args.fixed_rate = args.fixed_rate or [300.0, 1000.0]
    if args.rows < 1 or args.rate <= 0 or min(args.fixed_rate) <= 0 or args.fixed_seconds <= 0:
        parser.error("--rows, --rate, --fixed-rate and --fixed-seconds must be positive")
    if min(args.bulk_concurrency) < 1:
        parser.error("--bulk-concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def measure(results: dict[str, Any], budget: Budget) -> None:
        results["sinks"] = {}
        for sink in args.sink:
            for concurrency in args.bulk_concurrency:
                # One concurrency keeps the old names, so older results compare directly.
                run = sink if len(args.bulk_concurrency) == 1 else f"{sink} x{concurrency}"
                say(f"sink {run}")
                results["sinks"][run] = run_sink(sink, args, budget, concurrency)

    code, results = run_bench("ceiling", args, measure)
    if code == 0:
        report(results)
    return code


if __name__ == "__main__":
    sys.exit(main())
