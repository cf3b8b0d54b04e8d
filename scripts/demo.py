"""`make demo`: the whole product on this machine, stopped by Ctrl-C.

Starts an osmem-server OpenSearch stand-in (unless OPENSEARCH_URL is set), migrates the
console database, creates a demo source table and its subscription, runs `runsyncer`
and a writer that inserts, updates and deletes orders, and tells you how to look.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("PGSETUP_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONSOLE_DB = "searchsync"
SOURCE_DB = "searchsync_demo"


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def ensure_database(name: str) -> str:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            say(f"created database {name}")
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def start_opensearch() -> tuple[str, Any]:
    if os.environ.get("OPENSEARCH_URL"):
        say(f"using OPENSEARCH_URL={os.environ['OPENSEARCH_URL']}")
        return os.environ["OPENSEARCH_URL"], None
    from osmem_server import OsmemServer

    addr = "127.0.0.1:9200" if port_free(9200) else "127.0.0.1:0"
    server = OsmemServer.start(addr=addr, japanese=False)
    say(f"started osmem-server (in-memory OpenSearch stand-in) at {server.url}")
    return str(server.url), server


def prepare_source(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS demo_orders (
                order_id bigint PRIMARY KEY,
                customer text NOT NULL,
                status text NOT NULL,
                total numeric(12, 2) NOT NULL,
                items jsonb NOT NULL DEFAULT '[]',
                placed_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        if conn.execute("SELECT count(*) FROM demo_orders").fetchone() == (0,):
            conn.execute(
                """
                INSERT INTO demo_orders (order_id, customer, status, total, items)
                SELECT i, 'customer-' || (i % 50), 'placed', round((random() * 500)::numeric, 2),
                       jsonb_build_array(jsonb_build_object('sku', 'sku-' || (i % 20), 'qty', 1))
                FROM generate_series(1, 1000) i
                """
            )
            say("seeded demo_orders with 1,000 rows")


def writer(url: str, stop: threading.Event) -> None:
    """Insert, update and delete a few orders a second."""
    rng = random.Random(7)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(order_id), 0) + 1 FROM demo_orders").fetchone()
        next_id = int(row[0]) if row else 1
        while not stop.wait(0.2):
            roll = rng.random()
            if roll < 0.5:
                conn.execute(
                    "INSERT INTO demo_orders (order_id, customer, status, total) "
                    "VALUES (%s, %s, 'placed', %s)",
                    (next_id, f"customer-{rng.randrange(50)}", round(rng.uniform(5, 500), 2)),
                )
                next_id += 1
            elif roll < 0.85:
                conn.execute(
                    "UPDATE demo_orders SET status = %s WHERE order_id = "
                    "(SELECT order_id FROM demo_orders ORDER BY random() LIMIT 1)",
                    (rng.choice(["paid", "shipped", "delivered"]),),
                )
            else:
                conn.execute(
                    "DELETE FROM demo_orders WHERE order_id = "
                    "(SELECT order_id FROM demo_orders ORDER BY random() LIMIT 1)"
                )


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    env.setdefault("DATABASE_URL", ensure_database(CONSOLE_DB))
    source_url = ensure_database(SOURCE_DB)
    env["DEMO_SOURCE_URL"] = source_url
    opensearch_url, server = start_opensearch()
    env["OPENSEARCH_URL"] = opensearch_url
    stop = threading.Event()
    worker: subprocess.Popen[bytes] | None = None
    try:
        manage("migrate", "--verbosity", "0", env=env)
        prepare_source(source_url)
        manage("subscriptions", "apply", "scripts/demo-subscriptions.yaml", env=env)
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "runsyncer", "--subscription", "demo-orders"],
            cwd=ROOT,
            env=env,
        )
        threading.Thread(target=writer, args=(source_url, stop), daemon=True).start()
        time.sleep(2)
        print(
            f"""
----------------------------------------------------------------------------
searchsync demo is running: demo_orders in {SOURCE_DB} -> index demo-orders.
A writer inserts, updates and deletes a few orders a second. Look at it with:

  curl -s '{opensearch_url}/demo-orders/_count'
  curl -s '{opensearch_url}/demo-orders/_search?q=status:shipped&size=3&pretty'
  DATABASE_URL={env["DATABASE_URL"]} .venv/bin/python manage.py subscriptions show demo-orders
  psql {source_url} -c 'SELECT count(*) FROM demo_orders'

Ctrl-C stops the writer, the worker and the OpenSearch stand-in.
----------------------------------------------------------------------------
""",
            flush=True,
        )
        while worker.poll() is None:
            time.sleep(0.5)
        say(f"runsyncer exited with code {worker.returncode}")
        return 0 if worker.returncode == 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping")
        stop.set()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(40)
            except subprocess.TimeoutExpired:
                worker.kill()
        if server is not None:
            server.close()
        say("stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Installed explicitly: a shell that starts us in the background ignores SIGINT.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    sys.exit(main())
