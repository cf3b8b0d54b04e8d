"""What `old` (the document before a change) costs the pipeline's CPU work, on one core.

    .venv/bin/python bench/old_documents.py [--rows 100000] [--rounds 9]

No server. Three steps of the pipeline, each timed without and with old rows:

- consolidation (`syncer.engine.consolidate`) of `--rows` updates over 20,000 keys in
  transactions of 1,000: a source that sends no old row, and one that sends one on
  every update (the first old of each key is kept);
- the PostgreSQL source's decoding of `--rows` pgoutput UPDATE messages of a 5-column
  row with one changed column: default identity (no old tuple) and REPLICA IDENTITY
  FULL (the 'O' tuple decoded into the old document; unchanged columns reuse the new
  row's decoded values);
- the Materialize assembler settling `--rows` retraction+insertion pairs (the
  retracted row becomes old) against the same number of plain insertions.

Each figure is this process's CPU time (`time.process_time`: time spent descheduled
by other work on a shared machine is left out), the best of `--rounds` rounds, the
variants interleaved, since a shared machine's noise would otherwise decide. Memory:
bytes Python allocates for the batch and its consolidated changes, without and with
old rows (tracemalloc).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from psycopg.adapt import Transformer  # noqa: E402

from syncer.engine.changes import RowChange, RowOp, Transaction  # noqa: E402
from syncer.engine.consolidate import consolidate  # noqa: E402
from syncer.engine.timestamps import TimestampAssembler, Update  # noqa: E402
from syncer.sources.postgres import pgoutput  # noqa: E402
from syncer.sources.postgres.source import (  # noqa: E402
    PostgresSource,
    PostgresSourceConfig,
    _Stream,
)
from syncer.sources.values import make_decoder  # noqa: E402

KEYS = 20_000


def document(key: int, status: str) -> dict[str, Any]:
    return {"id": key, "tenant": key % 100, "status": status, "total": "123.45", "note": "x" * 40}


def batch(rows: int, with_old: bool) -> list[Transaction]:
    transactions = []
    for start in range(0, rows, 1000):
        changes = []
        for i in range(start, min(rows, start + 1000)):
            key = i % KEYS
            old = document(key, "open") if with_old else None
            old_key = (key,) if with_old else None  # identity FULL sends the old key too
            changes.append(RowChange(RowOp.UPDATE, (key,), document(key, "paid"), old_key, old=old))
        transactions.append(Transaction(start, 0.0, changes))
    return transactions


def best(variants: list[tuple[Callable[[Any], object], Any]], rounds: int) -> list[float]:
    times = [float("inf")] * len(variants)
    for _ in range(rounds):
        for i, (function, argument) in enumerate(variants):
            started = time.process_time()
            function(argument)
            times[i] = min(times[i], time.process_time() - started)
    return times


def decoding(rows: int) -> tuple[Callable[[Any], object], list[Any], list[Any]]:
    oids = (23, 23, 25, 1700, 25)  # int4, int4, text, numeric, text
    names = ("id", "tenant", "status", "total", "note")
    stream = _Stream(names, tuple(make_decoder(Transformer(), oid) for oid in oids), (0,))
    source = PostgresSource(PostgresSourceConfig("bench", "", "public.t", ("id",), "slot"))
    new = (b"7", b"7", b"paid", b"123.45", b"x" * 40)
    old = (b"7", b"7", b"open", b"123.45", b"x" * 40)

    def decode_all(messages: list[pgoutput.Update]) -> None:
        for message in messages:
            source._row_change(stream, message)

    default = [pgoutput.Update(1, new, None, False)] * rows
    full = [pgoutput.Update(1, new, old, True)] * rows
    return decode_all, default, full


def assembling(rows: int) -> tuple[Callable[[Any], object], list[Update], list[Update]]:
    def settle(updates: list[Update]) -> None:
        assembler = TimestampAssembler(["id"])
        for update in updates:
            assembler.add(update)
        assembler.progress(updates[-1].timestamp + 1)
        assembler.take(len(updates))

    inserts = [Update(1 + i // 1000, document(i, "paid"), diff=1) for i in range(rows)]
    pairs = []
    for i in range(rows // 2):
        t = 1 + (2 * i) // 1000
        pairs += [Update(t, document(i, "open"), diff=-1), Update(t, document(i, "paid"), diff=1)]
    return settle, inserts, pairs


def held(rows: int, with_old: bool) -> int:
    """Bytes allocated for a batch and its consolidated changes, both still held."""
    tracemalloc.start()
    transactions = batch(rows, with_old)
    changes = consolidate(transactions)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del changes, transactions
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rows = args.rows

    plain, full = batch(rows, False), batch(rows, True)
    none_s, old_s = best([(consolidate, plain), (consolidate, full)], args.rounds)
    print(f"consolidate {rows:,} updates over {KEYS:,} keys (best of {args.rounds}):")
    print(f"  no old rows      {none_s * 1000:8.1f} ms  {rows / none_s:>11,.0f} rows/s")
    print(
        f"  old on every row {old_s * 1000:8.1f} ms  {rows / old_s:>11,.0f} rows/s"
        f"  ({old_s / none_s:.2f}x)"
    )

    decode_all, default, full_identity = decoding(rows)
    d0, d1 = best([(decode_all, default), (decode_all, full_identity)], args.rounds)
    print(f"PostgreSQL: decode {rows:,} UPDATE messages, 5 columns, 1 changed:")
    print(f"  default identity {d0 * 1000:8.1f} ms  {rows / d0:>11,.0f} rows/s")
    print(f"  identity FULL    {d1 * 1000:8.1f} ms  {rows / d1:>11,.0f} rows/s  ({d1 / d0:.2f}x)")

    settle, inserts, pairs = assembling(rows)
    a0, a1 = best([(settle, inserts), (settle, pairs)], args.rounds)
    print(f"Materialize: settle {rows:,} updates per timestamp of 1,000:")
    print(f"  insertions           {a0 * 1000:8.1f} ms  {rows / a0:>11,.0f} updates/s")
    print(
        f"  retraction+insertion {a1 * 1000:8.1f} ms  {rows / a1:>11,.0f} updates/s"
        f"  ({a1 / a0:.2f}x; half as many changes, each with its old row)"
    )

    m0, m1 = held(rows, False), held(rows, True)
    print(
        f"memory of the batch and its changes: {m0 / 2**20:.1f} MiB without old rows, "
        f"{m1 / 2**20:.1f} MiB with ({(m1 - m0) / rows:.0f} bytes per old row)"
    )


if __name__ == "__main__":
    main()
