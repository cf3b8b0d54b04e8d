"""`manage.py verify` (issue 17): its time and peak memory as the table grows, and the
repair of a drift of 1%.

    .venv/bin/python bench/verify.py [--rows 20000 80000] [--chunk-rows 1000 5000]
                                     [--rounds 2] [--drift-percent 1] [--py-spy]

One osmem-server and one real `runsyncer` process (left running throughout, as the
command needs: nothing is compared before the subscription has written up to the
verification's snapshot). For each of `--rows`, bench/run.py's realistic table of that
many rows gets its own subscription (snapshot mode `index`), copied until
`snapshot_completed_at` is set and its index holds every row. Then, `--rounds` times,
every table in turn is verified by `python manage.py verify NAME --json`, a child
process with the worker's environment and `SYNCER_VERIFY_CHUNK_ROWS` at the first
`--chunk-rows`, and the largest again at each other `--chunk-rows` (the machine's speed
drifts: sizes and chunks alternate within each round). Before them, a verification of
one document (`--keys`, a file of one id) gives the process's floor: Django, psycopg and
opensearch-py loaded, no data.

Per run: the wall time from the child's start to its exit, and its phases as its
Verification row shows them (polled every 0.1 s: opening (the snapshot, the
connections), waiting for the subscription to catch up, the rows in key order against
`mget`, the index's documents against the snapshot); rows + documents per second, over
the wall time and over the two comparing phases; the child's peak RSS (its VmHWM, read
every 0.05 s while it runs; ru_maxrss from wait4 is kept too, but on Linux it starts
from the bench's own peak at the fork, noted as `parent_maxrss_bytes`); the CPU of the
child (wait4), of osmem-server and of the PostgreSQL backends connected to the source
database (the worker's included) over the run; and the JSON's counts, which must show
every row and document read, every row checked, nothing skipped or drifted.

Drift: on the smallest table, `--drift-percent` of the documents (a fixed sample) are
indexed again behind the product's back with a changed title and no version (OpenSearch
adds one to the document's version, which stays below any later position); `verify
--repair` must find exactly those as differing and repair them all (their titles back),
and a verification after it must find nothing. `--py-spy` then verifies the largest
table once more under `py-spy record --idle` and prints the share of its samples in each
part (PARTS): where the time goes (sampling slows it, so that run is not timed).

Own databases (BENCH_DB_SUFFIX; the console database is dropped at the end too), own
osmem-server; slots, the worker and the sink are cleaned up on exit. docs/benchmarks.md
records the figures.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.copy_workers import SETTLE_SECONDS, SharedCopyBench, _completed
from bench.procfs import memory, pid_cpu
from bench.run import (
    ADMIN_DSN,
    ARTIFACTS,
    CONSOLE_DB,
    PREFIX,
    ROOT,
    SOURCE_DB,
    Budget,
    mb,
    print_load,
    run_bench,
    say,
    stop_process,
    wait_until,
)

MEMORY_EVERY = 0.05
PHASE_EVERY = 0.1
BACKENDS_EVERY = 0.5
"""Seconds between the reads of the child's VmHWM, its Verification's phase, and the
CPU of the source database's backends."""
PHASES = ("opening", "waiting", "rows", "documents")
CHUNK_DEFAULT = 1000
"""SYNCER_VERIFY_CHUNK_ROWS's default."""


class VerifyBench(SharedCopyBench):
    worker: subprocess.Popen[bytes] | None = None

    def start_runsyncer(self) -> None:
        """One worker for every subscription the bench makes (it picks them up as they
        are created)."""
        self.worker = self._runsyncer(f"{PREFIX}verify", 0, self.worker_env())
        time.sleep(SETTLE_SECONDS)
        self.check_worker()

    def check_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            raise RuntimeError(f"the worker exited: see {self._log(f'{PREFIX}verify', 0)}")

    def teardown(self) -> None:
        if self.worker is not None:
            stop_process(self.worker)
        super().teardown()
        drop_console()

    def synced(self, rows: int) -> Any:
        """A subscription over a new table of `rows` rows, its first copy complete and
        its index holding every row."""
        table = f"bench_verify_{rows}"
        self.make_table(table, rows)
        name = f"{PREFIX}verify-{rows}"
        started = time.time()
        sub = self.subscription(name, f"public.{table}", "index")
        seconds = self.wait_copied(sub, rows, started)
        say(f"{name}: copied {rows:,} rows in {seconds:.1f} s")
        return sub

    def wait_copied(self, sub: Any, rows: int, started: float) -> float:
        """Wait until `sub`'s copy is complete and its index holds `rows` documents;
        the seconds from `started` (a time.time()) to the copy's completion."""
        name = sub.name

        def completed() -> Any:
            self.check_worker()
            return _completed(sub)

        done = wait_until(
            completed, timeout=self.budget.cap(600), what=f"{name}'s copy", interval=0.2
        )
        wait_until(
            lambda: self.count(name) == rows,
            timeout=self.budget.cap(60),
            what=f"{name} to hold {rows:,} documents",
            interval=0.5,
        )
        return float(done.timestamp() - started)

    def verify(
        self,
        sub: Any,
        label: str,
        chunk_rows: int,
        *flags: str,
        expect_exit: int = 0,
        profile: bool = False,
    ) -> dict[str, Any]:
        """`manage.py verify SUB --json FLAGS` in a child process, measured; with
        `profile`, sampled by py-spy too (which slows it: not a run to time)."""
        from syncer.models import Verification

        env = {**self.worker_env(), "SYNCER_VERIFY_CHUNK_ROWS": str(chunk_rows)}
        out, err = ARTIFACTS / f"verify-{label}.json", ARTIFACTS / f"verify-{label}.log"
        command = [sys.executable, "manage.py", "verify", sub.name, "--json", *flags]
        before = Verification.objects.filter(subscription=sub).count()
        watch = Watch(self, sub)
        try:
            parent_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            with out.open("wb") as stdout, err.open("wb") as stderr:
                started = time.time()
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
            raw = ARTIFACTS / f"verify-{label}.pyspy.txt"
            spy = py_spy(process.pid, raw) if profile else None
            try:
                status, usage = watch.until_exit(process, timeout=self.budget.cap(600))
            finally:
                if process.returncode is None:  # interrupted: never leave it running
                    process.kill()
                    process.wait(10)
                if spy is not None:
                    stop_process(spy, timeout=30)  # it ends with the process it samples
            wall = time.time() - started
            costs = {
                "peak_rss_bytes": watch.peak,
                "rss_samples": watch.samples,
                "ru_maxrss_bytes": usage.ru_maxrss * 1024,
                "parent_maxrss_bytes": parent_maxrss,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "osmem_cpu_s": watch.osmem_cpu(),
                "postgres_cpu_s": watch.backends_cpu(),
                "worker_cpu_s": watch.worker_cpu(),
            }
        finally:
            watch.close()
        text = out.read_text()
        if status != expect_exit:
            raise RuntimeError(
                f"verify {' '.join(flags)} exited {status}, not {expect_exit}: see {err}\n"
                f"{text[-1500:]}"
            )
        result = json.loads(text)
        if Verification.objects.filter(subscription=sub).count() != before + 1:
            raise RuntimeError(f"verify of {sub.name} did not make exactly one Verification")
        counts = result["counts"]
        read = counts["rows"] + counts["documents"]
        phases = watch.phase_seconds(result)
        compared_s = phases.get("rows", 0.0) + phases.get("documents", 0.0)
        figures = {
            "label": label,
            "flags": list(flags),
            "chunk_rows": chunk_rows,
            "exit": status,
            "counts": counts,
            "drifted": result["drifted"],
            "ran_in": result["worker"],
            "wall_s": wall,
            "startup_s": _seconds(result["started_at"]) - started,
            "verification_s": _seconds(result["finished_at"]) - _seconds(result["started_at"]),
            "phases_s": phases,
            "read_per_s": read / wall,
            "read_per_s_compared": read / compared_s if compared_s else None,
            **costs,
        }
        if spy is not None and raw.exists():
            figures["py_spy"] = shares(raw)
        if not result["worker"].startswith("command "):
            # The worker polls for requested verifications: it took this one first.
            raise RuntimeError(f"verification {result['id']} ran in {result['worker']!r}")
        say(
            f"{label}: {read:,} rows and documents in {wall:.1f} s ({figures['read_per_s']:,.0f}"
            f"/s; verification {figures['verification_s']:.1f} s: {_phases(phases)}), peak RSS "
            f"{mb(figures['peak_rss_bytes']):.0f} MB, CPU {figures['cpu_s']:.1f} s, osmem "
            f"{figures['osmem_cpu_s']:.1f} s, PostgreSQL {figures['postgres_cpu_s']:.1f} s"
        )
        return figures

    def clean(self, sub: Any, rows: int, label: str, chunk_rows: int) -> dict[str, Any]:
        """A verification of every row and document that must find everything right."""
        figures = self.verify(sub, label, chunk_rows)
        counts = figures["counts"]
        wanted = {"rows": rows, "documents": rows, "checked": rows, "drifted": 0, "skipped": 0}
        got = {name: counts[name] for name in wanted}
        if got != wanted:
            raise RuntimeError(f"{label}: counts {got}, not {wanted}")
        return figures

    def floor(self, sub: Any) -> dict[str, Any]:
        """A verification of one document: the process with nothing to hold."""
        keys = ARTIFACTS / "verify-floor-keys.txt"
        keys.write_text("1\n")
        figures = self.verify(sub, "floor", CHUNK_DEFAULT, "--keys", str(keys))
        if figures["counts"]["checked"] != 1:
            raise RuntimeError(f"the one-document verification: {figures['counts']}")
        return figures

    def drift(self, sub: Any, rows: int, chunk_rows: int) -> dict[str, Any]:
        """Tamper with `--drift-percent` of the documents; repair; verify again."""
        tampered = self.tamper(sub.index_name, rows)
        repair = self.verify(sub, "repair", chunk_rows, "--repair")
        c = repair["counts"]
        found = {name: c[name] for name in ("differs", "missing", "extra", "repaired")}
        wanted = {"differs": len(tampered), "missing": 0, "extra": 0, "repaired": len(tampered)}
        if found != wanted or c["superseded"] or c["repair_failed"]:
            raise RuntimeError(f"repair of {len(tampered):,} tampered documents: {c}")
        titles = self.titles(sub.index_name, list(tampered))
        wrong = [i for i, title in tampered.items() if titles.get(i) != title]
        if wrong:
            raise RuntimeError(f"{len(wrong):,} repaired documents differ, e.g. {wrong[:5]}")
        after = self.clean(sub, rows, "after-repair", chunk_rows)
        return {"tampered": len(tampered), "repair": repair, "after": after}

    def tamper(self, index: str, rows: int) -> dict[str, str]:
        """Index a sample of documents again with a changed title and no version; return
        their ids and their titles as they were."""
        from opensearchpy import helpers

        count = max(1, round(rows * self.args.drift_percent / 100))
        ids = [str(i) for i in sorted(random.Random(17).sample(range(1, rows + 1), count))]
        client = self.client()
        try:
            docs = client.mget(index=index, body={"ids": ids})["docs"]
            titles = {d["_id"]: d["_source"]["title"] for d in docs}
            actions = [
                {
                    "_op_type": "index",
                    "_index": index,
                    "_id": d["_id"],
                    "_source": {**d["_source"], "title": d["_source"]["title"] + " (tampered)"},
                }
                for d in docs
            ]
            ok, errors = helpers.bulk(client, actions, max_retries=0, refresh=True)
        finally:
            client.close()
        if errors or ok != count:
            raise RuntimeError(f"tampering: {ok} of {count} indexed, {str(errors)[:300]}")
        say(f"{index}: {count:,} documents tampered with (a changed title, no version)")
        return titles

    def titles(self, index: str, ids: list[str]) -> dict[str, str]:
        client = self.client()
        try:
            client.indices.refresh(index=index)
            docs = client.mget(index=index, body={"ids": ids})["docs"]
        finally:
            client.close()
        return {d["_id"]: d["_source"]["title"] for d in docs if d.get("found")}


def py_spy(pid: int, raw: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` (idle samples too: waiting is where a verification may
    spend its time) until it exits, into `raw` (collapsed stacks)."""
    return subprocess.Popen(
        [
            shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--idle",
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


PARTS = (
    ("waiting for I/O (PostgreSQL, osmem, the console database)", ("EpollSelector.select (",)),
    ("progress saves", ("_Saver.report (", "_Saver.save (")),
    ("rows to documents' JSON (as_written)", ("as_written (",)),
    ("comparing", ("compare_rows (", "compare_documents (")),
    ("decoding rows", ("PostgresSnapshot._row (",)),
    ("reading rows (psycopg fetchmany)", ("PostgresSnapshot.rows (",)),
    ("mget (opensearch-py, JSON)", ("VerifiedIndex.indexed (",)),
    ("index pages (scroll or PIT, JSON)", ("VerifiedIndex.pages (",)),
    ("documents' rows looked up", ("Verifier._present (",)),
    ("changes since the snapshot", ("PostgresSnapshot.changed (",)),
    ("waiting to catch up", ("_caught_up.<locals>.caught_up (",)),
    ("taking the snapshot, connecting", ("PostgresSnapshot.open (", "VerifiedIndex.open (")),
    ("the rest of the verification", ("Command.handle (syncer/management/commands/verify.py",)),
)
"""Parts of a verification's py-spy samples, most specific first: a sample counts to the
first part one of whose frames its stack holds (a frame is `qualified.name (file:line)`);
one in none is the process's start-up and exit (imports, Django's setup and checks)."""
STARTUP = "start-up and exit (imports, Django setup, checks)"
IDLE_THREADS = ("wait (threading.py", "get (queue.py", "_worker (concurrent/futures/thread.py")
"""Leaves of threads that wait for work (Django's pool for the async ORM): not counted."""


def shares(raw: Path) -> dict[str, float]:
    """Share of py-spy's samples per part (PARTS), from its raw (collapsed) output."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_THREADS) and "asyncio" not in stack:
            continue
        total += int(n)
        part = STARTUP
        for label, needles in PARTS:
            if any(frame.startswith(needles) for frame in frames):
                part = label
                break
        counts[part] += int(n)
    return {part: n / total for part, n in counts.most_common()} if total else {}


class Watch:
    """What a running verification costs, read from outside: the child's VmHWM, the
    phases of its Verification row, the CPU of osmem-server, of the worker and of the
    source database's backends."""

    def __init__(self, bench: VerifyBench, sub: Any) -> None:
        from syncer.models import Verification

        self.bench = bench
        self.sub = sub
        self.peak = 0
        self.samples = 0
        self.seen: dict[str, float] = {}
        last = Verification.objects.filter(subscription=sub).order_by("-pk").first()
        self._after = last.pk if last else 0
        """The child's Verification is the first after this one."""
        self._admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10)
        self._osmem_pid = int(getattr(bench.server, "pid", 0) or bench.server.process.pid)
        self._osmem_before = pid_cpu(self._osmem_pid)
        assert bench.worker is not None
        self._worker_before = pid_cpu(bench.worker.pid)
        self._backends: dict[int, tuple[float, float]] = {}
        """pid → (CPU when first seen, CPU when last seen): a backend there before the
        run counts from then, one started during it from its start."""
        for pid in self._backend_pids():
            cpu = pid_cpu(pid)
            self._backends[pid] = (cpu, cpu)

    def until_exit(
        self, process: subprocess.Popen[bytes], timeout: float
    ) -> tuple[int, resource.struct_rusage]:
        """Sample `process` until it exits; its exit status and resource usage (wait4)."""
        deadline = time.monotonic() + timeout
        next_phase = next_backends = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                return process.returncode, usage
            now = time.monotonic()
            if now > deadline:
                process.send_signal(signal.SIGTERM)
                raise RuntimeError(f"verify of {self.sub.name} ran more than {timeout:.0f} s")
            with contextlib.suppress(OSError):  # it exited between the poll and this read
                self.peak = max(self.peak, memory(process.pid).get("VmHWM", 0))
                self.samples += 1
            if now >= next_phase:
                next_phase = now + PHASE_EVERY
                self._phase()
            if now >= next_backends:
                next_backends = now + BACKENDS_EVERY
                self._read_backends()
            time.sleep(MEMORY_EVERY)

    def _phase(self) -> None:
        from syncer.models import Verification

        found = (
            Verification.objects.filter(subscription=self.sub, pk__gt=self._after)
            .order_by("pk")
            .values_list("phase", flat=True)
            .first()
        )
        if found and found not in self.seen:
            self.seen[found] = time.time()

    def phase_seconds(self, result: dict[str, Any]) -> dict[str, float]:
        """Seconds in each phase, from when each was first seen (the last to the end);
        `opening` is from the start to the first (taking the snapshot, connecting)."""
        marks = sorted((at, phase) for phase, at in self.seen.items() if phase != "done")
        end = _seconds(result["finished_at"])
        opening = {"opening": marks[0][0] - _seconds(result["started_at"])} if marks else {}
        return opening | {
            phase: (marks[i + 1][0] if i + 1 < len(marks) else end) - at
            for i, (at, phase) in enumerate(marks)
        }

    def _backend_pids(self) -> list[int]:
        rows = self._admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (SOURCE_DB,)
        ).fetchall()
        return [int(pid) for (pid,) in rows]

    def _read_backends(self) -> None:
        for pid in self._backend_pids():
            cpu = pid_cpu(pid)
            first, _ = self._backends.get(pid, (0.0, 0.0))
            if cpu:
                self._backends[pid] = (first, cpu)

    def backends_cpu(self) -> float:
        self._read_backends()
        return sum(last - first for first, last in self._backends.values())

    def osmem_cpu(self) -> float:
        return pid_cpu(self._osmem_pid) - self._osmem_before

    def worker_cpu(self) -> float:
        assert self.bench.worker is not None
        return pid_cpu(self.bench.worker.pid) - self._worker_before

    def close(self) -> None:
        self._admin.close()


def _seconds(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


def _phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())


def drop_console() -> None:
    """The console database goes too: nothing of a run is kept but its results file."""
    try:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(CONSOLE_DB)
                )
            )
    except (ImportError, psycopg.Error) as exc:
        say(f"could not drop {CONSOLE_DB}: {exc}")


def measure(args: argparse.Namespace, results: dict[str, Any], budget: Budget) -> None:
    bench = VerifyBench(args, budget)
    bench.sink = "osmem"
    sizes = sorted(args.rows)
    chunk, *other_chunks = args.chunk_rows
    results["load_average_start"] = os.getloadavg()
    runs: list[dict[str, Any]] = results.setdefault("runs", [])
    try:
        bench.setup()
        bench.start_runsyncer()
        subs = {rows: bench.synced(rows) for rows in sizes}
        results["floor"] = bench.floor(subs[sizes[0]])
        # Every size once a round, in turn: the machine's speed drifts between rounds.
        for round_no in range(1, args.rounds + 1):
            for rows in sizes:
                label = f"{rows}-chunk{chunk}-{round_no}"
                run = bench.clean(subs[rows], rows, label, chunk)
                runs.append({"rows": rows, "round": round_no, **run})
            for other in other_chunks:
                rows = sizes[-1]
                run = bench.clean(subs[rows], rows, f"{rows}-chunk{other}-{round_no}", other)
                runs.append({"rows": rows, "round": round_no, **run})
        results["drift"] = {"rows": sizes[0], **bench.drift(subs[sizes[0]], sizes[0], chunk)}
        if args.py_spy:
            rows = sizes[-1]
            results["profiled"] = bench.verify(
                subs[rows], f"{rows}-chunk{chunk}-py-spy", chunk, profile=True
            )
    finally:
        bench.teardown()
        results["load_average_end"] = os.getloadavg()

    def mean(rows: int, key: str, chunk_rows: int = chunk) -> float:
        picked = [
            float(r[key]) for r in runs if r["rows"] == rows and r["chunk_rows"] == chunk_rows
        ]
        return sum(picked) / len(picked)

    small, large = sizes[0], sizes[-1]
    floor = results["floor"]["peak_rss_bytes"]
    results["ratios"] = {
        "rows": large / small,
        "peak_rss": mean(large, "peak_rss_bytes") / mean(small, "peak_rss_bytes"),
        "peak_rss_above_floor": (mean(large, "peak_rss_bytes") - floor)
        / max(mean(small, "peak_rss_bytes") - floor, 1),
        "compared_per_s": mean(large, "read_per_s_compared") / mean(small, "read_per_s_compared"),
        **{
            f"chunk{other}_over_chunk{chunk}": {
                "compared_per_s": mean(large, "read_per_s_compared", other)
                / mean(large, "read_per_s_compared"),
                "peak_rss": mean(large, "peak_rss_bytes", other) / mean(large, "peak_rss_bytes"),
            }
            for other in other_chunks
        },
    }
    report(results)


def report(results: dict[str, Any]) -> None:
    header = (
        "run",
        "rows",
        "chunk",
        "wall s",
        "opening/waiting/rows/docs s",
        "read/s (wall, compared)",
        "peak RSS",
        "CPU s: verify/osmem/PG",
        "result",
    )
    lines: list[tuple[str, ...]] = []
    floor = results["floor"]
    drift = results["drift"]
    shown = [
        ("floor (--keys, 1 id)", drift["rows"], floor),
        *((f"verify {r['rows']:,} #{r['round']}", r["rows"], r) for r in results["runs"]),
        (f"--repair, {drift['tampered']:,} tampered", drift["rows"], drift["repair"]),
        ("verify after repair", drift["rows"], drift["after"]),
    ]
    for name, rows, run in shown:
        c = run["counts"]
        p = run["phases_s"]
        result = f"checked {c['checked']:,}, drifted {c['drifted']:,}"
        if "--repair" in run["flags"]:
            result += f", repaired {c['repaired']:,}"
        lines.append(
            (
                name,
                f"{rows:,}",
                f"{run['chunk_rows']:,}",
                f"{run['wall_s']:.1f}",
                "/".join(f"{p.get(phase, 0.0):.1f}" for phase in PHASES),
                f"{run['read_per_s']:,.0f}, {run['read_per_s_compared'] or 0:,.0f}",
                f"{mb(run['peak_rss_bytes']):.0f} MB",
                f"{run['cpu_s']:.1f}/{run['osmem_cpu_s']:.1f}/{run['postgres_cpu_s']:.1f}",
                result,
            )
        )
    widths = [max(len(r[i]) for r in [*lines, header]) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(rule)
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print(rule)
    r = results["ratios"]
    print(
        f"{r['rows']:.0f}x the rows: {r['peak_rss']:.2f}x the peak RSS "
        f"({r['peak_rss_above_floor']:.2f}x above the one-document floor), "
        f"{r['compared_per_s']:.2f}x the rows and documents per second compared (means "
        "of the rounds)"
    )
    for name, ratio in r.items():
        if name.startswith("chunk"):
            print(
                f"{name.replace('_over_', ' over ')} (largest table): "
                f"{ratio['compared_per_s']:.2f}x the rate, {ratio['peak_rss']:.2f}x the peak RSS"
            )
    profiled = results.get("profiled")
    if profiled and "py_spy" in profiled:
        spy = dict(profiled["py_spy"])
        start = spy.pop(STARTUP, 0.0)
        top = ", ".join(f"{part} {share / (1 - start):.0%}" for part, share in spy.items())
        print(
            f"py-spy, verify {profiled['counts']['rows']:,} (slowed by sampling): start-up and "
            f"exit {start:.0%} of the samples; of the rest: {top}"
        )
    print(
        "read/s = (rows + documents) / the process's wall time (start to exit), and / the "
        "rows and documents phases; peak RSS = the child's VmHWM; MB = 10^6 bytes"
    )
    print_load(results)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 80_000])
    parser.add_argument(
        "--chunk-rows",
        type=int,
        nargs="+",
        default=[CHUNK_DEFAULT, 5_000],
        help="SYNCER_VERIFY_CHUNK_ROWS: every size at the first, the largest at the others",
    )
    parser.add_argument("--rounds", type=int, default=2, help="verifications of each size")
    parser.add_argument("--drift-percent", type=float, default=1.0)
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="then verify the largest table once more under py-spy: where its time goes",
    )
    parser.add_argument("--budget", type=float, default=900.0)
    args = parser.parse_args(argv)
    if min(args.rows) < 100 or min(args.chunk_rows) < 1 or args.rounds < 1:
        parser.error("--rows must be at least 100, --chunk-rows and --rounds positive")
    if not 0 < args.drift_percent < 100:
        parser.error("--drift-percent must be between 0 and 100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench("verify", args, lambda results, budget: measure(args, results, budget))[0]


if __name__ == "__main__":
    sys.exit(main())
