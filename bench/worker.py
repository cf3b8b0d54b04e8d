"""One subscription's pipeline in a process of its own, instrumented for bench/run.py.

    .venv/bin/python bench/worker.py --subscription NAME --out result.json

Builds the pipeline exactly as `runsyncer` does (`syncer.wiring.build_pipeline`) and
runs it until SIGTERM/SIGINT, a time limit, or the death of its parent. An observer
records, for every acknowledged source transaction (TxKind.CHANGES), the time from
its commit on the source to its acknowledgement (checkpoint saved), and a timer
records how long each read, bulk write, slot advance, checkpoint save and dead-letter
save or supersede took. While running it rewrites `<out>.progress` twice a second; on
exit it writes `<out>`: the latencies, counters and the process's own peak RSS (VmHWM;
ru_maxrss too, see below), and its process CPU clock (utime + stime, as /proc/<pid>/stat)
at the pipeline's start, the snapshot's end and the first and last acknowledged changes,
and the CPU its cyclic garbage collector took from the pipeline's start (`gc_seconds`, per
generation in `gc_by_generation`, timed by a `gc.callbacks` hook).
With BENCH_PY_SPY=1 in its environment (bench/profile.py sets it), it also has py-spy
record it from the pipeline's start to its exit, `--format raw`, into `<out>.pyspy.txt`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
os.environ.setdefault("SEARCHSYNC_WORKER_PROCESS", "1")  # the apps runsyncer loads, no more

import django  # noqa: E402

django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.db import connections  # noqa: E402

from syncer.engine.changes import Transaction, TxKind  # noqa: E402
from syncer.engine.pipeline import Pipeline, sleep_unless_stopped  # noqa: E402
from syncer.models import Subscription  # noqa: E402
from syncer.wiring import build_pipeline  # noqa: E402
from syncer.worker import heap  # noqa: E402


class Recorder:
    """The pipeline's observer: what was acknowledged, and when."""

    def __init__(self) -> None:
        # Arrays of doubles, not lists of floats: what the bench keeps must not weigh on
        # the worker's peak RSS (8 bytes a transaction instead of 32).
        self.latencies = array.array("d")
        self.commit_times = array.array("d")
        self.changes = 0
        self.first_ack_at: float | None = None
        self.last_ack_at: float | None = None
        self.first_commit: float | None = None
        self.last_commit: float | None = None
        self.batches = 0
        self.snapshot_rows = 0
        self.snapshot_done_at: float | None = None
        # Process CPU (utime + stime of all threads, the clock /proc/<pid>/stat sums) at
        # the first and last acknowledgement of changes, and at the snapshot's end.
        self.cpu_first_ack: float | None = None
        self.changes_first_ack = 0
        self.cpu_last_ack: float | None = None
        self.cpu_snapshot_done: float | None = None

    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        self.batches += 1
        for tx in batch:
            if tx.kind is TxKind.CHANGES:
                self.latencies.append(at - tx.commit_time)
                self.commit_times.append(tx.commit_time)
                self.changes += len(tx.changes)
                if self.first_ack_at is None:
                    self.first_ack_at = at
                    self.cpu_first_ack = time.process_time()
                    self.changes_first_ack = self.changes
                self.last_ack_at = at
                self.cpu_last_ack = time.process_time()
                if self.first_commit is None or tx.commit_time < self.first_commit:
                    self.first_commit = tx.commit_time
                if self.last_commit is None or tx.commit_time > self.last_commit:
                    self.last_commit = tx.commit_time
            elif tx.kind is TxKind.SNAPSHOT_CHUNK or tx.kind is TxKind.COPY_CHUNK:
                self.snapshot_rows += len(tx.changes)
            elif tx.kind is TxKind.SNAPSHOT_END:
                self.snapshot_done_at = at
                self.cpu_snapshot_done = time.process_time()

    def progress(self) -> dict[str, Any]:
        return {
            "transactions": len(self.latencies),
            "changes": self.changes,
            "batches": self.batches,
            "snapshot_rows": self.snapshot_rows,
            "snapshot_done_at": self.snapshot_done_at,
            "first_ack_at": self.first_ack_at,
            "last_ack_at": self.last_ack_at,
            "first_commit": self.first_commit,
            "last_commit": self.last_commit,
            "cpu_first_ack": self.cpu_first_ack,
            "changes_first_ack": self.changes_first_ack,
            "cpu_last_ack": self.cpu_last_ack,
            "cpu_snapshot_done": self.cpu_snapshot_done,
        }


class CallTimer:
    """Times the pipeline's I/O calls (source reads, bulk writes, slot and checkpoint moves,
    dead letters saved and superseded).

    Wraps methods of the pipeline's source, sink and store instances: the product's
    code is unchanged, and each call costs one more coroutine frame.
    """

    def __init__(self) -> None:
        # Per completed call, packed: a list of tuples cost the worker ~0.7 KB of RSS per
        # batch (30 MB over 45,000 one-change batches), charged to the product's peak.
        self._names: list[str] = []
        self._method = array.array("B")
        self._started = array.array("d")
        self._seconds = array.array("d")
        self._size = array.array("q")

    @property
    def calls(self) -> list[tuple[str, float, float, int]]:
        """(method, started, seconds, size) per completed call."""
        names = self._names
        return [
            (names[m], started, seconds, size)
            for m, started, seconds, size in zip(
                self._method, self._started, self._seconds, self._size, strict=True
            )
        ]

    def wrap(
        self,
        obj: Any,
        method: str,
        size: Callable[[tuple[Any, ...], Any], int] | None = None,
        label: str | None = None,
    ) -> None:
        original = getattr(obj, method)
        self._names.append(label or method)
        index = len(self._names) - 1

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            result = await original(*args, **kwargs)
            measured = size(args, result) if size is not None else 0
            self._method.append(index)
            self._started.append(started)
            self._seconds.append(time.time() - started)
            self._size.append(measured)
            return result

        setattr(obj, method, timed)

    def instrument(self, pipeline: Pipeline) -> None:
        self.wrap(pipeline.source, "read", lambda _, txs: sum(len(t.changes) for t in txs))
        self.wrap(pipeline.sink, "write", lambda args, _: len(args[0]))
        self.wrap(pipeline.source, "acknowledge")
        self.wrap(pipeline.store, "save_checkpoint")
        self.wrap(pipeline.store, "set_status")
        self.wrap(pipeline.dead_letters, "put", _first_len, label="dead_letters.put")
        self.wrap(pipeline.dead_letters, "supersede", _first_len, label="dead_letters.supersede")


def _first_len(args: tuple[Any, ...], result: Any) -> int:
    """The size of a call whose first argument is the list of items."""
    return len(args[0])


def ru_maxrss_bytes() -> int:
    """getrusage's peak RSS (KiB on Linux).

    Linux carries ru_maxrss over an execve from the image it replaces: a worker
    started by subprocess (vfork + exec) from a parent holding 300 MB reports at least
    300 MB. So it is recorded, but `peak_rss_bytes` is what the bench judges.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    """This process's own peak RSS: VmHWM, the high-water mark of its address space."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return ru_maxrss_bytes()


class GcTimer:
    """The process CPU the cyclic garbage collector takes, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time()
            return
        generation = int(info["generation"])
        self.seconds[generation] += time.process_time() - self._started
        self.collections[generation] += 1

    def figures(self) -> dict[str, Any]:
        return {
            "gc_seconds": sum(self.seconds),
            "gc_by_generation": [
                {"collections": n, "seconds": s}
                for n, s in zip(self.collections, self.seconds, strict=True)
            ],
        }


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def report_progress(
    recorder: Recorder, path: Path, stop: asyncio.Event, parent: int, deadline: float
) -> None:
    """Rewrite the progress file; stop the pipeline at the deadline or if the parent died."""
    while True:
        write_json(path, {**recorder.progress(), "peak_rss_bytes": peak_rss_bytes()})
        if os.getppid() != parent or time.monotonic() > deadline:
            stop.set()
        if await sleep_unless_stopped(stop, 0.5):
            break


def start_py_spy(out: Path) -> None:
    """With BENCH_PY_SPY=1, have py-spy record this process into `<out>.pyspy.txt`:
    it samples until this process exits, then writes its file."""
    if os.environ.get("BENCH_PY_SPY") != "1":
        return
    raw = out.with_name(out.name + ".pyspy.txt")
    raw.unlink(missing_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(os.getpid()), "--rate", "250", "--format", "raw"]
    subprocess.Popen(
        [*command, "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def main(name: str, out: Path, max_seconds: float) -> int:
    started = time.time()
    start_py_spy(out)
    sub = await sync_to_async(Subscription.objects.get, thread_sensitive=True)(name=name)
    recorder = Recorder()
    pipeline = build_pipeline(sub, observer=recorder)
    timer = CallTimer()
    timer.instrument(pipeline)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    progress_path = out.with_name(out.name + ".progress")
    reporter = asyncio.create_task(
        report_progress(recorder, progress_path, stop, os.getppid(), time.monotonic() + max_seconds)
    )
    heap.settle()  # as runsyncer does before it runs
    gc_timer = GcTimer()
    gc.callbacks.append(gc_timer)
    run_started = time.time()
    cpu_started = time.process_time()
    try:
        await pipeline.run(stop)
    finally:
        stop.set()
        await reporter
        await sync_to_async(connections.close_all, thread_sensitive=True)()
        # Read before the bench's own records become lists for the JSON below.
        peak, ru_peak, cpu_total = peak_rss_bytes(), ru_maxrss_bytes(), time.process_time()
        write_json(
            out,
            {
                **recorder.progress(),
                "latencies": recorder.latencies.tolist(),
                "commit_times": recorder.commit_times.tolist(),
                "calls": timer.calls,
                "process_started": started,
                "pipeline_started": run_started,
                "cpu_pipeline_started": cpu_started,
                "cpu_total": cpu_total,
                **gc_timer.figures(),
                "stopped": time.time(),
                "peak_rss_bytes": peak,
                "ru_maxrss_bytes": ru_peak,
                "stats": {
                    "written": pipeline.stats.written,
                    "stale": pipeline.stats.stale,
                    "dead_lettered": pipeline.stats.dead_lettered,
                    "retries": pipeline.stats.retries,
                    "outages": pipeline.stats.outages,
                    "buffer_peak": pipeline.buffer_peak,
                },
            },
        )
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscription", required=True, metavar="NAME")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600,
        help="stop by itself after this long (default 600)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(asyncio.run(main(args.subscription, args.out, args.max_seconds)))
