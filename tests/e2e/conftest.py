"""The live monitor end to end: daphne, runsyncer, Redis, PostgreSQL, osmem and Chromium.

Every process is real and started here on free ports: a redis-server of the test's own
(the channel layer, so other test runs on the machine never see our groups), daphne
serving console.asgi:application on the test database, `manage.py runsyncer` writing
to osmem through a TCP proxy the test can take down, and Debian's /usr/bin/chromium
driven by Playwright (never a downloaded browser).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import wait_for
from tests.support.process import ROOT, WorkerProcess, database_url, free_port, start_daphne
from tests.support.tcpproxy import TcpProxy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts" / "e2e"
STAFF_USER = "operator"
STAFF_PASSWORD = "e2e-operator-password"


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own: the channel layer between worker and daphne."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: apt-get install -y redis-server"
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return False
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        wait_for(answers, timeout=10, what="redis-server to answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)
        log.close()


@pytest.fixture
def staff_user(transactional_db: None) -> tuple[str, str]:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser(STAFF_USER, "operator@example.com", STAFF_PASSWORD)
    return STAFF_USER, STAFF_PASSWORD


@dataclass
class ConsoleServer:
    """daphne serving console.asgi:application; `restart()` keeps the port."""

    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def start(self) -> None:
        self.process = start_daphne(self.port, self.env, self.log)
        wait_for(self._serving, timeout=30, what="daphne to serve /admin/login/")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _serving(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, f"daphne exited:\n{self.output()}"
        try:
            with urllib.request.urlopen(f"{self.url}/admin/login/", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False


@pytest.fixture
def console_server(
    transactional_db: None, redis_url: str, opensearch_url: str, tmp_path: Path
) -> Iterator[ConsoleServer]:
    """daphne serving console.asgi:application on the test database."""
    env = {
        **_base_env(),
        "DATABASE_URL": database_url(),
        "REDIS_URL": redis_url,
        "OPENSEARCH_URL": opensearch_url,
        "DJANGO_SETTINGS_MODULE": "console.settings",
    }
    server = ConsoleServer(free_port(), env, tmp_path / "daphne.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _base_env() -> dict[str, str]:
    import os

    # Plain http://127.0.0.1, as in the demo: cookies without the Secure flag.
    return {
        **os.environ,
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }


@pytest.fixture
def start_worker(redis_url: str, opensearch_proxy: TcpProxy, tmp_path: Path) -> Iterator[Any]:
    """Start `manage.py runsyncer` (publishing on our Redis, writing through the proxy)."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(
            opensearch_proxy.url(),
            tmp_path / f"worker{len(started)}.log",
            *args,
            REDIS_URL=redis_url,
            SYNCER_HEARTBEAT_INTERVAL="1",
            SYNCER_STATS_INTERVAL="1",
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        try:
            worker.terminate(30)
        except subprocess.TimeoutExpired:
            worker.kill()


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser`"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            context.close()


def screenshot(page: Any, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_until(predicate: Any, timeout: float = 15, what: str = "") -> Any:
    """`wait_for` for callers that poll the browser (time.sleep is fine: sync Playwright)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {timeout} s waiting for {what}"
            return value
        time.sleep(0.2)
