"""PostgreSQL's own decoding rate of a workload's WAL with pgoutput, for bench/ceiling.py.

A `DecodingProbe` is a logical slot (pgoutput) and a publication of the workload's table,
both its own, created before the workload's writes: the slot then holds exactly the WAL
the worker's slot decodes, with the same plugin and options (proto_version 1, one
publication of that one table). After the writes, `mark_end` records the WAL position
the writer reached, and `measure` decodes up to it twice, with nothing done to the rows:

- peek: `SELECT count(*) ... FROM pg_logical_slot_peek_binary_changes(slot, end, NULL,
  'proto_version', '1', 'publication_names', pub)` in one backend (work_mem 256MB, so
  the function's tuplestore stays in memory): decoding alone, in one SQL call. Timed
  from the client, with the backend's CPU (utime + stime from /proc) around the call.
- pg_recvlogical: `pg_recvlogical --start -o proto_version=1 -o publication_names=pub
  -f - --endpos end --no-loop`: the decoded stream sent over the replication protocol
  (a walsender, one message per change, as a streaming worker receives it) to a client
  that writes it to a pipe, which the bench reads in 64 KiB chunks and drops. It
  consumes the slot, so it runs after the peek. Timed from the pipe's first byte to its
  end (the process's exit at `end`): not the start-up, connection and START_REPLICATION,
  which are recorded apart. Its CPU (utime + stime, from getrusage) is recorded, and
  the walsender's (from /proc, its pid from pg_replication_slots.active_pid at the first
  byte, read again at each chunk: the last reading before it exits, so the last chunk's
  work is missing).

The rate is changes (insert, update and delete messages, counted by the peek) per
second. Both readers also read the WAL other databases on the cluster wrote meanwhile,
as the worker's reader does. `close` drops the slot and the publication.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bench.procfs import pid_cpu

RECVLOGICAL = os.environ.get("BENCH_PG_RECVLOGICAL", "/usr/bin/pg_recvlogical")
CHANGE_MESSAGES = (ord("I"), ord("U"), ord("D"))
"""The first byte of pgoutput's insert, update and delete messages."""


@dataclass
class DecodingProbe:
    dsn: str
    table: str
    name: str
    """The slot's and the publication's name (at most 63 characters)."""
    end_lsn: str | None = None
    opened: bool = False

    def open(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(self.name), sql.Identifier(self.table)
                )
            )
            self.opened = True
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.name,))

    def mark_end(self) -> None:
        """Record where the writes end: a logical message committed after them (which
        pgoutput does not send). Its commit waits for the WAL flush, so the writes'
        commits, flushed or not (synchronous_commit off), are decodable up to it."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET synchronous_commit = on")
            row = conn.execute(
                "SELECT pg_logical_emit_message(true, 'searchsync-bench', 'end')::text"
            ).fetchone()
        assert row is not None
        self.end_lsn = str(row[0])

    def measure(self, expected: int) -> dict[str, Any]:
        """Decode up to end_lsn; RuntimeError unless that is the `expected` changes."""
        if self.end_lsn is None:
            raise RuntimeError("DecodingProbe.measure before mark_end")
        peek = self.peek()
        changes = peek["changes"]
        if changes != expected:
            raise RuntimeError(f"the second slot decoded {changes:,} changes, not {expected:,}")
        recv = self.recvlogical()
        return {
            "changes": changes,
            "messages": peek["messages"],
            "end_lsn": self.end_lsn,
            "peek_s": peek["seconds"],
            "peek_changes_per_s": changes / peek["seconds"],
            "peek_backend_cpu_s": peek["backend_cpu_s"],
            "peek_backend_cpu_ms_per_1000": peek["backend_cpu_s"] / changes * 1e6,
            "recvlogical_s": recv["seconds"],
            "recvlogical_startup_s": recv["startup_s"],
            "recvlogical_bytes": recv["bytes"],
            "recvlogical_changes_per_s": changes / recv["seconds"],
            "recvlogical_client_cpu_s": recv["client_cpu_s"],
            "recvlogical_walsender_cpu_s": recv["walsender_cpu_s"],
            "recvlogical_walsender_cpu_ms_per_1000": recv["walsender_cpu_s"] / changes * 1e6
            if recv["walsender_cpu_s"] is not None
            else None,
        }

    def peek(self) -> dict[str, Any]:
        query = """
            SELECT count(*), count(*) FILTER (WHERE get_byte(data, 0) = ANY(%s))
            FROM pg_logical_slot_peek_binary_changes(
                %s, %s::pg_lsn, NULL,
                'proto_version', '1', 'publication_names', %s)
        """
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET work_mem = '256MB'")
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            backend = int(row[0])
            cpu = pid_cpu(backend)
            started = time.perf_counter()
            counts = conn.execute(
                query, (list(CHANGE_MESSAGES), self.name, self.end_lsn, self.name)
            ).fetchone()
            seconds = time.perf_counter() - started
            cpu = pid_cpu(backend) - cpu
        assert counts is not None
        return {
            "messages": int(counts[0]),
            "changes": int(counts[1]),
            "seconds": seconds,
            "backend_cpu_s": cpu,
        }

    def recvlogical(self) -> dict[str, Any]:
        """One pg_recvlogical up to end_lsn, its stream read from a pipe and dropped: timed
        from its first byte to its end, so that neither the start-up nor the connection
        counts (on a busy machine they vary more than the decoding takes)."""
        assert self.end_lsn is not None
        command = [
            RECVLOGICAL,
            "--dbname",
            self.dsn,
            "--slot",
            self.name,
            "--start",
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            f"publication_names={self.name}",
            "--file",
            "-",
            "--endpos",
            self.end_lsn,
        ]
        # The bench's other children (workers, sinks) are not reaped meanwhile, so the
        # children's clock moves by pg_recvlogical's CPU alone.
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        first: float | None = None
        size = 0
        walsender, sender_cpu, sender_last = 0, 0.0, 0.0
        with (
            psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn,
            subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            ) as process,
        ):
            assert process.stdout is not None and process.stderr is not None
            while chunk := os.read(process.stdout.fileno(), 1 << 16):
                if first is None:
                    first = time.perf_counter()
                    row = conn.execute(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                        (self.name,),
                    ).fetchone()
                    walsender = int(row[0]) if row and row[0] else 0
                    sender_cpu = sender_last = pid_cpu(walsender) if walsender else 0.0
                elif walsender:
                    # The walsender exits with the stream: its last reading before the end.
                    sender_last = max(sender_last, pid_cpu(walsender))
                size += len(chunk)
            ended = time.perf_counter()
            error = process.stderr.read().decode(errors="replace").strip()
            code = process.wait(60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0 or first is None:
            raise RuntimeError(f"pg_recvlogical exited {code} after {size:,} bytes: {error}")
        return {
            "seconds": max(ended - first, 1e-9),
            "startup_s": first - started,
            "bytes": size,
            "client_cpu_s": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
            "walsender_cpu_s": sender_last - sender_cpu if walsender else None,
        }

    def close(self) -> None:
        """Drop the slot and the publication, if they were made."""
        if not self.opened:
            return
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (self.name,),
            )
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(self.name)))
        self.opened = False


def describe(d: dict[str, Any], ours: float) -> str:
    """`measure`'s figures, and the worker's rate `ours` as a share of each."""
    peek, recv = d["peek_changes_per_s"], d["recvlogical_changes_per_s"]
    sender = d.get("recvlogical_walsender_cpu_ms_per_1000")
    return (
        f"PostgreSQL decodes {d['changes']:,} changes at {peek:,.0f}/s (peek; backend CPU "
        f"{d['peek_backend_cpu_ms_per_1000']:.1f} ms / 1,000), {recv:,.0f}/s (pg_recvlogical; "
        f"walsender CPU {'?' if sender is None else f'{sender:.1f}'} ms / 1,000); the worker's "
        f"{ours:,.0f}/s is {ours / recv:.0%} of pg_recvlogical, {ours / peek:.0%} of peek"
    )
