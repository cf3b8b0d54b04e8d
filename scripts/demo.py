"""`make demo`: the whole product on this machine, stopped by Ctrl-C.

Starts an osmem-server OpenSearch stand-in (unless OPENSEARCH_URL is set) and a local
redis-server for the live monitor (unless one answers on 127.0.0.1:6379), migrates the
console database, creates a demo source table and its subscription and a demo superuser
(when there is none), runs `runsyncer`, daphne serving the console (admin, API and the
live monitor on http://127.0.0.1:8000) and a writer that inserts, updates and deletes
orders, and tells you how to look.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
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
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages are beside it

from syncer.text import redact  # noqa: E402

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


def redis_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return False
        try:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def start_redis(env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """The live monitor's channel layer: a local redis-server unless REDIS_URL is set or
    one already answers on 127.0.0.1:6379."""
    if os.environ.get("REDIS_URL"):
        say("using REDIS_URL from the environment")
        return None
    env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    if redis_answers(6379):
        say("using the redis-server on 127.0.0.1:6379")
        return None
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "demo: no Redis on 127.0.0.1:6379 and no redis-server to start: install it "
            "(apt-get install -y redis-server) or set REDIS_URL"
        )
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not redis_answers(6379):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("demo: redis-server did not start on 127.0.0.1:6379")
        time.sleep(0.1)
    say("started redis-server on 127.0.0.1:6379")
    return process


DEMO_ADMIN = "admin"
_ENSURE_SUPERUSER = """
import os
from django.contrib.auth import get_user_model
User = get_user_model()
if User.objects.filter(is_superuser=True).exists():
    print("existing")
else:
    User.objects.create_superuser(os.environ["DEMO_ADMIN"], "", os.environ["DEMO_ADMIN_PASSWORD"])
    print("created")
"""


def ensure_superuser(env: dict[str, str]) -> str:
    """How to log in: a new demo superuser and its password, or the existing ones."""
    password = secrets.token_urlsafe(12)
    # The password goes through the environment, never a command line.
    child = {**env, "DEMO_ADMIN": DEMO_ADMIN, "DEMO_ADMIN_PASSWORD": password}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", _ENSURE_SUPERUSER],
        cwd=ROOT,
        env=child,
        check=True,
        capture_output=True,
        text=True,
    )
    if result.stdout.strip().endswith("created"):
        return f"user {DEMO_ADMIN!r}, password {password!r} (created for this demo)"
    return (
        "an existing superuser (forgot the password? "
        ".venv/bin/python manage.py changepassword <user>)"
    )


def start_console(env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    """daphne serving the admin, the API and the live monitor's websockets."""
    port = 8000 if port_free(8000) else free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "console.asgi:application",
        ],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while port_free(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"demo: daphne did not start on {url}")
        time.sleep(0.2)
    say(f"started daphne (console.asgi:application) at {url}")
    return url, process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def start_opensearch() -> tuple[str, Any]:
    if os.environ.get("OPENSEARCH_URL"):
        say(f"using OPENSEARCH_URL={redact(os.environ['OPENSEARCH_URL'])}")
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


def demo_secret_key() -> str:
    """The demo's own SECRET_KEY, kept in .demo/ so logins survive a restart of the demo."""
    path = ROOT / ".demo" / "secret-key"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


def demo_env() -> dict[str, str]:
    """The environment of the demo's processes: production settings, but on plain HTTP."""
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    # With DEBUG off, daphne and runsyncer refuse to start without a key of their own.
    env.setdefault("SECRET_KEY", demo_secret_key())
    # http://127.0.0.1:8000: a browser would not send Secure cookies back over it.
    env.setdefault("SESSION_COOKIE_SECURE", "false")
    env.setdefault("CSRF_COOKIE_SECURE", "false")
    return env


def instructions(
    console_url: str, login: str, opensearch_url: str, database_url: str, source_url: str
) -> str:
    """How to look at the running demo; passwords in the URLs are shown as ***."""
    text = f"""
----------------------------------------------------------------------------
searchsync demo is running: demo_orders in {SOURCE_DB} -> index demo-orders.
A writer inserts, updates and deletes a few orders a second. Look at it with:

  Live monitor:  {console_url}/console/
  Admin:         {console_url}/admin/
  API docs:      {console_url}/api/docs
  Log in with {login}.

  curl -s '{opensearch_url}/demo-orders/_count'
  curl -s '{opensearch_url}/demo-orders/_search?q=status:shipped&size=3&pretty'
  DATABASE_URL={database_url} .venv/bin/python manage.py subscriptions show demo-orders
  psql {source_url} -c 'SELECT count(*) FROM demo_orders'

Ctrl-C stops the writer, the worker, daphne, the OpenSearch stand-in and the
redis-server the demo started.
----------------------------------------------------------------------------
"""
    shown = redact(text)
    if shown != text:
        shown += "(passwords are shown as ***: put your own in the commands above)\n"
    return shown


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def main() -> int:
    env = demo_env()
    env.setdefault("DATABASE_URL", ensure_database(CONSOLE_DB))
    source_url = ensure_database(SOURCE_DB)
    env["DEMO_SOURCE_URL"] = source_url
    stop = threading.Event()
    server: Any = None
    redis: subprocess.Popen[bytes] | None = None
    console: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        redis = start_redis(env)
        opensearch_url, server = start_opensearch()
        env["OPENSEARCH_URL"] = opensearch_url
        manage("migrate", "--verbosity", "0", env=env)
        login = ensure_superuser(env)
        prepare_source(source_url)
        manage("subscriptions", "apply", "scripts/demo-subscriptions.yaml", env=env)
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "runsyncer", "--subscription", "demo-orders"],
            cwd=ROOT,
            env=env,
        )
        console_url, console = start_console(env)
        threading.Thread(target=writer, args=(source_url, stop), daemon=True).start()
        time.sleep(2)
        print(
            instructions(console_url, login, opensearch_url, env["DATABASE_URL"], source_url),
            flush=True,
        )
        while worker.poll() is None:
            if console.poll() is not None:
                say(f"daphne exited with code {console.returncode}")
                return 1
            time.sleep(0.5)
        say(f"runsyncer exited with code {worker.returncode}")
        return 0 if worker.returncode == 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping")
        stop.set()
        stop_process(console, 10)
        stop_process(worker, 40)
        if server is not None:
            server.close()
        stop_process(redis, 10)
        say("stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Installed explicitly: a shell that starts us in the background ignores SIGINT.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    sys.exit(main())
