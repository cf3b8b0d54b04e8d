"""A throwaway PostgreSQL cluster of the bench's own, for figures no other load disturbs.

Every walsender sends its client a keepalive each time the cluster's WAL moves while its
slot trails (docs/replication.md), so an idle worker's CPU depends on how much anyone
else writes to the same cluster: on these shared machines, the tests and benches of
other checkouts. bench/idle.py runs its source here by default, and writes a controlled
background load of its own (`Background`) when asked to.

The cluster is initdb'd into a temporary directory with the machine's PostgreSQL
binaries, run as the `postgres` user when started as root (PostgreSQL refuses root),
listens on a free port of 127.0.0.1 with trust auth, and is removed on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg

SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "200",
    "max_wal_senders": "160",
    "max_connections": "400",
    "fsync": "off",  # the disk's speed is not what these benches measure
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
}


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not candidates:
        raise RuntimeError("no PostgreSQL binaries found (pg_config, /usr/lib/postgresql)")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """`with PrivateCluster() as cluster:` then `cluster.dsn("db")`."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="searchsync-bench-pg-"))
        self._data = self._dir / "data"
        self._bin = _bindir()
        self._as_postgres = os.geteuid() == 0

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        argv = list(command)
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True)

    def __enter__(self) -> PrivateCluster:
        if self._as_postgres:
            shutil.chown(self._dir, "postgres")
        self._run(str(self._bin / "initdb"), "-D", str(self._data), "-U", "postgres", "-A", "trust")
        options = " ".join(f"-c {k}={v}" for k, v in SETTINGS.items())
        self._run(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self._data),
            "-l",
            str(self._dir / "log"),
            "-o",
            f"-p {self.port} {options}",
            "-w",
            "start",
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


class Background:
    """Commits `rate` one-row transactions a second into a database of their own on the
    cluster, in a thread, from `start` to `stop`: a production source's other traffic."""

    def __init__(self, admin_dsn: str, rate: float) -> None:
        self.rate = rate
        self.commits = 0
        self._admin = admin_dsn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background writes", daemon=True)

    def start(self) -> None:
        if self.rate > 0:
            with psycopg.connect(self._admin, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS bench_background")
                conn.execute("CREATE DATABASE bench_background")
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        dsn = self._admin.rsplit("/", 1)[0] + "/bench_background"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz)")
            interval = 1.0 / self.rate
            due = time.monotonic()
            while not self._stop.is_set():
                conn.execute("INSERT INTO t (at) VALUES (now())")
                self.commits += 1
                due += interval
                pause = due - time.monotonic()
                if pause > 0:
                    self._stop.wait(pause)
