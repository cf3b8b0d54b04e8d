"""`manage.py verify` of a Materialize subscription: its time and peak memory as the view
grows, and the repair of a drift of 1%.

    .venv/bin/python bench/verify_materialize.py [--rows 20000 80000] [--rounds 2]
                                                 [--chunk-rows 1000] [--floor-rows 100]
                                                 [--drift-percent 1] [--tick 0.05]

One osmem-server and one real `runsyncer` process (left running throughout, as the
command needs: nothing is compared before the subscription's checkpoint, its progress
frontier, is past the snapshot's timestamp). For each of `--rows`, and for a view of
`--floor-rows` (the floor: the process with almost nothing to hold), a pgwire
Materialize double (tests/support/materialize_double, `MaterializeDouble`) runs in a
process of its own (`serve_double`, started with `python -c`: its CPU and memory are
never the bench's or the verification's). It serves one view of that many rows (VIEW:
int8, text, numeric, bool, float8, jsonb, timestamptz; ~500 bytes a row in text, the
exact figure is measured), inserted in batches of INSERT_BATCH before any SUBSCRIBE,
then keeps its frontier moving with the clock (`ticking`, every `--tick` seconds: a
real Materialize ticks about once a second), prints its DSN and serves until its stdin
closes. Each view gets a subscription (source_kind `materialize`, key `id`, snapshot
mode `index`), copied until `snapshot_completed_at` is set and its index holds every
row; then each double's CPU is read over IDLE_SECONDS with nothing but the worker's
SUBSCRIBE and the ticks (its idle cost, part of every run's figure below).

Then the floor's view once, and `--rounds` times every other view in turn, is verified
by `python manage.py verify NAME --json`, a child process with the worker's environment and
`SYNCER_VERIFY_CHUNK_ROWS` at `--chunk-rows`, measured as bench/verify.py measures it
(`VerifyBench.verify`, `Watch`): the wall time from the child's start to its exit; its
phases as its Verification row shows them (polled every 0.1 s: opening (the three
sessions and the first SUBSCRIBE's first row), waiting (for the checkpoint to pass t),
the rows in arrival order against `mget`, the index's documents against the ids kept in
SQLite); rows + documents per second, over the wall time and over the two comparing
phases; the child's peak RSS (its VmHWM, read every 0.05 s); the CPU of the child
(wait4), of osmem-server, of the worker and of the view's double over the run. The
JSON's counts must show every row and document read, every row checked, nothing
skipped or drifted. Once, on the smallest view, `--keys` with one id (`keys`):
Materialize has no lookup by key, so that reads the snapshot once more, keeping that row.

Drift: on the smallest view, `--drift-percent` of the documents (a fixed sample) are
indexed again behind the product's back with a changed title and no version
(`VerifyBench.tamper`: OpenSearch adds one to the version, still below t); `verify
--repair` must find exactly those as differing and repair them all (their titles back;
the documents whose version changed are exactly those, now at t + 1), and a
verification after it must find nothing.

Own databases (BENCH_DB_SUFFIX: the console database, and bench/run.py's source
database, created and dropped unused), Redis database REDIS_URL (13 by default), own
osmem-server and doubles; the worker, the doubles, osmem and both databases are cleaned
up on exit. Raw figures: artifacts/bench/verify_materialize-<UTC time>.json (each
child's JSON and log: artifacts/bench/verify-mz-*). docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procfs import memory, pid_cpu
from bench.run import (
    ARTIFACTS,
    PREFIX,
    ROOT,
    Budget,
    make_row,
    mb,
    print_load,
    run_bench,
    say,
    stop_process,
)
from bench.verify import CHUNK_DEFAULT, PHASES, VerifyBench

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
VIEW = (
    ("id", "int8"),
    ("title", "text"),
    ("description", "text"),
    ("price", "numeric"),
    ("in_stock", "bool"),
    ("rating", "float8"),
    ("attrs", "jsonb"),
    ("updated_at", "timestamptz"),
)
"""The view's columns (the double's types); `id` is the key, `title` what
`VerifyBench.tamper` changes."""
INSERT_BATCH = 5_000
"""Rows per `MaterializeDouble.insert` (one timestamp each)."""
IDLE_SECONDS = 5.0
"""How long each double's CPU is read with no verification running."""
LAUNCHER = (
    "import sys; from bench.verify_materialize import serve_double; serve_double(sys.argv[1:])"
)
_WORDS = (
    "durable lightweight water-resistant everyday travel office outdoor recycled stitched "
    "padded adjustable strap pocket zip handle finish warranty design fits most and with "
    "for a the"
).split()


def view_row(rng: random.Random, row_id: int) -> tuple[Any, ...]:
    """One row of VIEW: bench/run.py's realistic row (title, price, timestamp, jsonb with
    its int array folded in) plus a ~300-character description, a flag and a rating."""
    _, title, price, updated_at, attrs, tags = make_row(rng, row_id)
    description = " ".join(rng.choice(_WORDS) for _ in range(46)).capitalize() + "."
    return (
        row_id,
        title,
        description,
        Decimal(price),
        rng.random() < 0.8,
        round(rng.uniform(1, 5), 3),
        {**attrs.obj, "tags": tags},
        updated_at,
    )


# -- the double, in its own process -----------------------------------------------------


def serve_double(argv: Sequence[str]) -> None:
    """The double's process (LAUNCHER): RELATION ROWS TICK. Insert ROWS rows of
    `view_row`, tick every TICK seconds, print one JSON line (DSN, text bytes a row),
    serve until stdin closes or SIGTERM."""
    from tests.support.materialize_double import MaterializeDouble
    from tests.support.materialize_double.collection import render

    relation, rows, tick = argv[0], int(argv[1]), float(argv[2])
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    double = MaterializeDouble(relation, VIEW).start()
    try:
        rng, size, started = random.Random(42), 0, time.monotonic()
        for first in range(1, rows + 1, INSERT_BATCH):
            batch = [view_row(rng, i) for i in range(first, min(first + INSERT_BATCH, rows + 1))]
            size += sum(
                len(render(value, kind) or "")
                for row in batch
                for value, (_, kind) in zip(row, VIEW, strict=True)
            )
            double.insert(*batch)
        filled = time.monotonic() - started
        with double.ticking(every=tick):
            ready = {"dsn": double.dsn, "row_bytes": size / max(rows, 1), "fill_s": filled}
            print(json.dumps(ready), flush=True)
            sys.stdin.read()  # until the bench closes it
    finally:
        double.stop()


@dataclass
class DoubleProcess:
    """One view's double, served by `serve_double` in a child process."""

    relation: str
    rows: int
    process: subprocess.Popen[bytes]
    dsn: str = ""
    row_bytes: float = 0.0
    fill_s: float = 0.0

    @classmethod
    def start(cls, relation: str, rows: int, tick: float, timeout: float) -> DoubleProcess:
        log = ARTIFACTS / f"verify-mz-double-{relation}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, relation, str(rows), str(tick)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        double = cls(relation, rows, process)
        try:
            assert process.stdout is not None
            ready = json.loads(_line(process.stdout, timeout) or "null")
            if not ready:
                raise RuntimeError(f"the double of {relation} did not start: see {log}")
        except BaseException:
            double.stop()
            raise
        double.dsn, double.row_bytes, double.fill_s = (
            ready["dsn"],
            ready["row_bytes"],
            ready["fill_s"],
        )
        return double

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return pid_cpu(self.pid)

    def peak_rss(self) -> int:
        try:
            return memory(self.pid).get("VmHWM", 0)
        except OSError:
            return 0

    def stop(self) -> None:
        """Close its stdin (it stops serving and exits); SIGTERM, then SIGKILL, if not."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.process, 10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _line(stream: IO[bytes], timeout: float) -> str:
    """One line of `stream` within `timeout` seconds ("" at its end or after it)."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline().decode()


# -- the bench --------------------------------------------------------------------------


class MaterializeVerifyBench(VerifyBench):
    doubles: dict[str, DoubleProcess]
    """By subscription name."""
    copy_seconds: dict[str, float]
    """By subscription name: subscription created to `snapshot_completed_at`."""
    tampered: set[str]

    def setup(self) -> None:
        self.doubles, self.copy_seconds, self.tampered = {}, {}, set()
        super().setup()

    def teardown(self) -> None:
        try:
            super().teardown()  # the worker first: its SUBSCRIBEs end before the doubles
        finally:
            for double in self.doubles.values():
                double.stop()

    def worker_env(self) -> dict[str, str]:
        return {**super().worker_env(), "REDIS_URL": REDIS_URL}

    def synced(self, rows: int) -> Any:
        """A subscription over a new double's view of `rows` rows, its first copy complete
        and its index holding every row."""
        from syncer.models import Subscription

        name = f"{PREFIX}mz-verify-{rows}"
        relation = f"bench_view_{rows}"
        double = DoubleProcess.start(relation, rows, self.args.tick, self.budget.cap(300))
        self.doubles[name] = double
        say(
            f"double of {relation}: {rows:,} rows of {double.row_bytes:.0f} bytes (text) "
            f"inserted in {double.fill_s:.1f} s, pid {double.pid}, {double.dsn}"
        )
        started = time.time()
        sub = Subscription(
            name=name,
            source_kind="materialize",
            source_dsn=double.dsn,
            relation=relation,
            key_columns=["id"],
            index_name=name,
            snapshot_mode="index",
        )
        sub.full_clean()
        sub.save()
        self.copy_seconds[name] = self.wait_copied(sub, rows, started)
        say(f"{name}: copied {rows:,} rows in {self.copy_seconds[name]:.1f} s")
        return sub

    def idle(self) -> dict[str, Any]:
        """CPU per second of each double (its ticks and the worker's SUBSCRIBE) and of the
        worker, with no verification running."""
        assert self.worker is not None
        before = {name: d.cpu() for name, d in self.doubles.items()}
        worker_before = pid_cpu(self.worker.pid)
        time.sleep(IDLE_SECONDS)
        return {
            "seconds": IDLE_SECONDS,
            "double_cpu_per_s": {
                name: (d.cpu() - before[name]) / IDLE_SECONDS for name, d in self.doubles.items()
            },
            "worker_cpu_per_s": (pid_cpu(self.worker.pid) - worker_before) / IDLE_SECONDS,
        }

    def verify(
        self,
        sub: Any,
        label: str,
        chunk_rows: int,
        *flags: str,
        expect_exit: int = 0,
        profile: bool = False,
    ) -> dict[str, Any]:
        """VerifyBench.verify (its artifacts named verify-mz-*), with the CPU of the view's
        double over the run."""
        double = self.doubles[sub.name]
        before = double.cpu()
        figures = super().verify(
            sub, f"mz-{label}", chunk_rows, *flags, expect_exit=expect_exit, profile=profile
        )
        figures["double_cpu_s"] = double.cpu() - before
        del figures["postgres_cpu_s"]  # the source database's backends: none, it is the double
        figures["position"] = json.loads((ARTIFACTS / f"verify-mz-{label}.json").read_text())[
            "position"
        ]
        say(f"  the double's CPU over that run: {figures['double_cpu_s']:.1f} s")
        return figures

    def keys(self, sub: Any, chunk_rows: int) -> dict[str, Any]:
        """`verify --keys` with one id (Materialize has no lookup by key: the snapshot is
        read once more for that row)."""
        keys = ARTIFACTS / "verify-mz-keys.txt"
        keys.write_text("1\n")
        figures = self.verify(sub, "keys", chunk_rows, "--keys", str(keys))
        counts = figures["counts"]
        if (counts["rows"], counts["checked"], counts["drifted"]) != (1, 1, 0):
            raise RuntimeError(f"the one-document verification: {counts}")
        return figures

    def tamper(self, index: str, rows: int) -> dict[str, str]:
        titles = super().tamper(index, rows)
        self.tampered = set(titles)
        return titles

    def drift(self, sub: Any, rows: int, chunk_rows: int) -> dict[str, Any]:
        """VerifyBench.drift, and: the documents the repair rewrote are exactly the
        tampered ones, each now at the snapshot's timestamp + 1; the examples it showed
        are among them."""
        before = self.versions(sub.index_name)
        figures = super().drift(sub, rows, chunk_rows)
        after = self.versions(sub.index_name)
        at = int(figures["repair"]["position"])
        rewritten = {i for i, version in after.items() if version != before.get(i)}
        shown = json.loads((ARTIFACTS / "verify-mz-repair.json").read_text())["examples"]
        examples = {e["id"] for e in shown.get("differs", [])}
        wrong = {i for i in rewritten if after[i] != at + 1}
        if rewritten != self.tampered or wrong or set(after) != set(before):
            raise RuntimeError(
                f"the repair rewrote {len(rewritten):,} documents, {len(self.tampered):,} were "
                f"tampered with; {len(wrong):,} not at t + 1 = {at + 1}"
            )
        if not examples or not examples <= self.tampered:
            raise RuntimeError(f"examples of differing documents not tampered with: {examples}")
        say(f"the repair rewrote exactly the {len(rewritten):,} tampered documents, at t + 1")
        return {**figures, "rewritten": len(rewritten), "examples_checked": len(examples)}

    def versions(self, index: str) -> dict[str, int]:
        return {doc_id: version for doc_id, version, _ in self.read_back(index)}


def checkout() -> dict[str, Any]:
    """The commit measured, and the files under the paths the run loads that differ
    from it (the checkout is shared: the double may be edited meanwhile)."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    paths = ("syncer", "console", "bench", "tests/support/materialize_double")
    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--porcelain", *paths)}


def measure(args: argparse.Namespace, results: dict[str, Any], budget: Budget) -> None:
    os.environ["REDIS_URL"] = REDIS_URL  # this process's Django too
    results["checkout"] = checkout()
    bench = MaterializeVerifyBench(args, budget)
    bench.sink = "osmem"
    sizes = sorted(args.rows)
    chunk = args.chunk_rows
    results["load_average_start"] = os.getloadavg()
    results["redis_url"] = REDIS_URL
    runs: list[dict[str, Any]] = results.setdefault("runs", [])
    try:
        bench.setup()
        bench.start_runsyncer()
        subs = {rows: bench.synced(rows) for rows in [args.floor_rows, *sizes]}
        results["views"] = {
            rows: {
                "relation": bench.doubles[sub.name].relation,
                "row_bytes": bench.doubles[sub.name].row_bytes,
                "double_fill_s": bench.doubles[sub.name].fill_s,
                "copy_s": bench.copy_seconds[sub.name],
            }
            for rows, sub in subs.items()
        }
        results["idle"] = bench.idle()
        results["floor"] = bench.clean(subs[args.floor_rows], args.floor_rows, "floor", chunk)
        for round_no in range(1, args.rounds + 1):
            for rows in sizes:
                run = bench.clean(subs[rows], rows, f"{rows}-{round_no}", chunk)
                runs.append({"rows": rows, "round": round_no, **run})
        small = sizes[0]
        results["keys"] = {"rows": small, **bench.keys(subs[small], chunk)}
        results["drift"] = {"rows": small, **bench.drift(subs[small], small, chunk)}
        assert bench.worker is not None
        results["peak_rss_bytes"] = {
            "worker": memory(bench.worker.pid).get("VmHWM", 0),
            **{f"double {d.rows}": d.peak_rss() for d in bench.doubles.values()},
        }
    finally:
        bench.teardown()
        results["load_average_end"] = os.getloadavg()

    def mean(rows: int, key: str) -> float:
        picked = [float(r[key]) for r in runs if r["rows"] == rows]
        return sum(picked) / len(picked)

    small, large = sizes[0], sizes[-1]
    floor = results["floor"]["peak_rss_bytes"]
    results["ratios"] = {
        "rows": large / small,
        "peak_rss": mean(large, "peak_rss_bytes") / mean(small, "peak_rss_bytes"),
        "peak_rss_above_floor_bytes": {
            rows: mean(rows, "peak_rss_bytes") - floor for rows in sizes
        },
        "compared_per_s": mean(large, "read_per_s_compared") / mean(small, "read_per_s_compared"),
    }
    report(results)


def report(results: dict[str, Any]) -> None:
    """The figures as a Markdown table, and what they come to."""
    drift = results["drift"]
    shown = [
        (f"floor: {results['args']['floor_rows']:,} rows", results["floor"], False),
        *((f"{r['rows']:,} rows, round {r['round']}", r, True) for r in results["runs"]),
        (f"`--keys`, one id ({results['keys']['rows']:,} rows)", results["keys"], False),
        (
            f"`--repair`, {drift['tampered']:,} tampered ({drift['rows']:,} rows)",
            drift["repair"],
            True,
        ),
        ("the verification after the repair", drift["after"], True),
    ]
    """(label, figures, whether its rate means anything: not for a few rows)"""
    print()
    print(
        "| run | wall s | start-up s | opening / waiting / rows / documents s | compared/s "
        "| peak RSS | CPU s: verify / double / osmem / worker | result |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | --- | --- |")
    for name, run, rated in shown:
        c, p = run["counts"], run["phases_s"]
        result = f"rows {c['rows']:,}, documents {c['documents']:,}, checked {c['checked']:,}, "
        result += f"skipped {c['skipped']:,}, drifted {c['drifted']:,}"
        if "--repair" in run["flags"]:
            result += f" (differs {c['differs']:,}), repaired {c['repaired']:,}"
        rate = f"{run['read_per_s_compared'] or 0:,.0f}" if rated else ""
        print(
            f"| {name} | {run['wall_s']:.1f} | {run['startup_s']:.1f} | "
            + " / ".join(f"{p.get(phase, 0.0):.1f}" for phase in PHASES)
            + f" | {rate} | {mb(run['peak_rss_bytes']):.1f} MB | "
            f"{run['cpu_s']:.1f} / {run['double_cpu_s']:.1f} / {run['osmem_cpu_s']:.1f} / "
            f"{run['worker_cpu_s']:.1f} | {result} |"
        )
    r = results["ratios"]
    above = ", ".join(
        f"{mb(v):.1f} MB at {int(k):,} rows" for k, v in r["peak_rss_above_floor_bytes"].items()
    )
    print()
    print(
        f"{r['rows']:.0f}x the rows: {r['peak_rss']:.3f}x the peak RSS (above the floor: "
        f"{above}); {r['compared_per_s']:.2f}x the rows and documents compared per second "
        "(means of the rounds)"
    )
    idle = results["idle"]
    print(
        "idle, CPU per second: doubles "
        + ", ".join(f"{name} {cpu:.3f}" for name, cpu in idle["double_cpu_per_s"].items())
        + f"; worker {idle['worker_cpu_per_s']:.3f}"
    )
    for rows, view in results["views"].items():
        print(
            f"view of {int(rows):,} rows: {view['row_bytes']:.0f} bytes a row (text), inserted "
            f"in {view['double_fill_s']:.1f} s, copied by the worker in {view['copy_s']:.1f} s"
        )
    print(
        "peak RSS of the other processes: "
        + ", ".join(f"{name} {mb(v):.0f} MB" for name, v in results["peak_rss_bytes"].items())
    )
    print(
        f"drift: the repair rewrote exactly the {drift['rewritten']:,} tampered documents "
        f"(at t + 1; {drift['examples_checked']} examples checked)"
    )
    print(
        "compared/s = (rows + documents) / the rows and documents phases; peak RSS = the "
        "child's VmHWM; MB = 10^6 bytes"
    )
    c = results["checkout"]
    changed = ", ".join(line.split()[-1] for line in c["changed"].splitlines()) or "none"
    print(f"commit {c['commit'][:10]}; files changed from it: {changed}")
    print_load(results)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 80_000])
    parser.add_argument("--rounds", type=int, default=2, help="verifications of each size")
    parser.add_argument(
        "--chunk-rows", type=int, default=CHUNK_DEFAULT, help="SYNCER_VERIFY_CHUNK_ROWS"
    )
    parser.add_argument(
        "--floor-rows",
        type=int,
        default=100,
        help="rows of the view whose verification is the floor",
    )
    parser.add_argument("--drift-percent", type=float, default=1.0)
    parser.add_argument(
        "--tick", type=float, default=0.05, help="seconds between the doubles' frontier steps"
    )
    parser.add_argument("--budget", type=float, default=1100.0)
    args = parser.parse_args(argv)
    if min(args.rows) < 100 or args.chunk_rows < 1 or args.rounds < 1 or args.tick <= 0:
        parser.error("--rows must be at least 100, --chunk-rows, --rounds and --tick positive")
    if not 1 <= args.floor_rows < min(args.rows):
        parser.error("--floor-rows must be positive and below every --rows")
    if not 0 < args.drift_percent < 100:
        parser.error("--drift-percent must be between 0 and 100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(
        "verify_materialize", args, lambda results, budget: measure(args, results, budget)
    )[0]


if __name__ == "__main__":
    sys.exit(main())
