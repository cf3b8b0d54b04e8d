"""Processes the tests and the bench start: `manage.py` commands, `runsyncer`, daphne.

Django-free at import (the bench imports it before `django.setup()`); the test
database's URL is read from the settings only when a worker is started without an
environment of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
MODULES_AT_EXIT = str(ROOT / "tests" / "support" / "modules_at_exit.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def database_url() -> str:
    """The console's test database, as a subprocess must reach it."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    return f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def worker_env() -> dict[str, str]:
    """This environment on the test database, reconnecting quickly, logging at INFO."""
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "SYNCER_BACKOFF_BASE": "0.2",
        "SYNCER_BACKOFF_CAP": "2",
        "LOG_LEVEL": "INFO",
    }


def manage(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `manage.py ARGS` to its end, its output captured; `env` replaces this environment."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_daphne(port: int, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start daphne serving console.asgi:application on 127.0.0.1:`port`; output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)),
                "console.asgi:application",
            ],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class WorkerProcess:
    """`manage.py runsyncer` as a real process; its stderr appended to `log`.

    `opensearch_url` (unless None) is its OPENSEARCH_URL; `base_env` replaces the test
    environment (`worker_env`); `metrics_port` serves /health, /ready and /metrics
    there; `modules_to` receives, at its exit, the modules it imported
    (tests/support/modules_at_exit.py); `env` is set on top of it all.
    """

    def __init__(
        self,
        opensearch_url: str | None,
        log: Path,
        *args: str,
        base_env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
        modules_to: Path | None = None,
        **env: str,
    ) -> None:
        self.log = log
        self.metrics_port = metrics_port
        environment = {
            **(worker_env() if base_env is None else base_env),
            **({} if opensearch_url is None else {"OPENSEARCH_URL": opensearch_url}),
            **env,
        }
        if metrics_port is not None:
            args = ("--metrics-port", str(metrics_port), *args)
        entry = ["manage.py"] if modules_to is None else [MODULES_AT_EXIT, str(modules_to)]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *entry, "runsyncer", *args],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def kill(self) -> None:
        """kill -9: no flush, no clean-up; its session (and advisory locks) drop with it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def worker_metric(port: int, name: str, **labels: str) -> float:
    """A sample of the /metrics a worker serves on `port` (0 when it is not there yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def settings_module(folder: Path, database: str, settings: Mapping[str, object]) -> dict[str, str]:
    """A settings module of its own in `folder`: console.settings, the test database
    `database` and `settings` on top; the environment variables that select it (for
    daphne, or a worker that must share daphne's channel layer)."""
    module = f"daphne_settings_{folder.name}".replace("-", "_")
    lines = [
        "from console.settings import *  # noqa: F403",
        f"DATABASES['default']['NAME'] = {database!r}  # noqa: F405",
        *(f"{name} = {value!r}" for name, value in settings.items()),
    ]
    (folder / f"{module}.py").write_text("\n".join(lines) + "\n")
    return {
        "DJANGO_SETTINGS_MODULE": module,
        "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
    }


@contextmanager
def serving_daphne(folder: Path, database: str, settings: Mapping[str, object]) -> Iterator[int]:
    """daphne on a settings module of its own in `folder` (`settings_module`); yields its
    port once /api/health answers."""
    with daphne_process(folder, database, settings) as (port, _):
        yield port


@contextmanager
def daphne_process(
    folder: Path, database: str, settings: Mapping[str, object]
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`serving_daphne`, yielding the process too (a test that pauses it)."""
    port = free_port()
    env = {**os.environ, **settings_module(folder, database, settings), "LOG_LEVEL": "INFO"}
    log = folder / "daphne.log"
    process = start_daphne(port, env, log)
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and not _healthy(port):
            assert time.monotonic() < deadline, "daphne did not answer /api/health in 30 s"
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()[-3000:]
        yield port, process
    finally:
        process.terminate()
        process.wait(15)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete a test module's Channels groups, messages and counts from Redis."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    finally:
        client.close()
