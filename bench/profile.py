"""Where the worker's CPU goes in bench/ceiling.py's workloads (issue 15, the hot path).

    .venv/bin/python bench/profile.py [bench/ceiling.py's options]
    .venv/bin/python bench/profile.py --raw artifacts/bench/bench-backlog.json.pyspy.txt ...

The first form runs bench/ceiling.py with BENCH_PY_SPY=1, so that bench/worker.py has
py-spy record each workload's worker (`--format raw`, 250 samples/s, from the pipeline's
start to the process's exit), then prints, per workload, the share of the busy samples
in each part of the hot path (PARTS) and the functions with the most samples of their
own. The second form only reads raw files already recorded.

py-spy stops the worker for each sample, so the run's own CPU figures are not the
benchmark's: take those from a run of bench/ceiling.py without it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The first part (in this order) that a sample's stack names gets the sample.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bench observer", ("Recorder.",)),
    ("value conversion", ("sources/values.py", "syncer/jsonload.py")),
    ("pgoutput decode", ("sources/postgres/pgoutput.py",)),
    ("row changes", ("_row_change", "_old_document", "PostgresSource._key", "key_of")),
    ("snapshot rows", ("_read_snapshot",)),
    ("consolidation", ("engine/consolidate.py",)),
    ("bulk body", ("OpenSearchSink._payload",)),
    ("bulk request and answer", ("OpenSearchSink.write", "opensearchpy/", "aiohttp/")),
    ("checkpoint and status saves", ("syncer/stores.py",)),
    ("source queries and decode loop", ("sources/postgres/source.py",)),
    ("live bus", ("syncer/live/",)),
    ("pipeline", ("syncer/engine/",)),
    ("event loop", ("asyncio/",)),
)
# Leaves sampled though the thread waits (an idle pool thread, the loop's epoll).
WAITING = ("_worker (concurrent/futures/thread.py", "EpollSelector.select")
WORKLOADS = ("backfill-1", "live", "backlog")


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            frames = stack.split(";")
            if not any(frames[-1].startswith(leaf) for leaf in WAITING):
                stacks.append((frames, int(count)))
    return stacks


def shares(stacks: list[tuple[list[str], int]]) -> dict[str, float]:
    """Share of the busy samples with a Python stack per part of PARTS ("other": none)."""
    counts: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if frames == [""]:
            continue
        part = next(
            (
                label
                for label, needles in PARTS
                if any(needle in frame for frame in frames for needle in needles)
            ),
            "other",
        )
        counts[part] += count
    total = sum(counts.values())
    return {part: n / total for part, n in counts.most_common()} if total else {}


def own(stacks: list[tuple[list[str], int]], top: int) -> list[tuple[str, float]]:
    """The functions with the most samples of their own (leaf frames, lines merged)."""
    counts: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if frames != [""]:
            counts[re.sub(r":\d+\)$", ")", frames[-1])] += count
    total = sum(counts.values())
    return [(name, n / total) for name, n in counts.most_common(top)] if total else []


def report(path: Path, top: int = 12) -> None:
    stacks = read_raw(path)
    total = sum(n for _, n in stacks)
    bare = sum(n for frames, n in stacks if frames == [""])
    # Samples of a thread with no Python frame at all: py-spy names no function for
    # them (run it with --native to see which), so they are left out of the shares.
    print(f"{path.name}: {total:,} busy samples, {bare / max(total, 1):.0%} with no Python frame")
    for part, share in shares(stacks).items():
        print(f"  {share:6.1%}  {part}")
    print("  own samples:")
    for name, share in own(stacks, top):
        print(f"  {share:6.1%}  {name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--raw", type=Path, action="append", help="only read these files")
    args, ceiling_args = parser.parse_known_args(argv)
    if args.raw:
        for path in args.raw:
            report(path)
        return 0
    os.environ["BENCH_PY_SPY"] = "1"
    from bench import ceiling
    from bench.run import ARTIFACTS, PREFIX

    code = ceiling.main(ceiling_args)
    for workload in WORKLOADS:
        path = ARTIFACTS / f"{PREFIX}{workload}.json.pyspy.txt"
        if path.exists():
            report(path)
    return code


if __name__ == "__main__":
    sys.exit(main())
