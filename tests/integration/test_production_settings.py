"""Production safety as real processes see it: a serving process refuses the public key,
and the documented production environment passes `check --deploy`.

Every process here runs console.settings (not the tests' settings, which bring a key of
their own) with only the environment each test gives it.
"""

from __future__ import annotations

import http.client
import importlib
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from syncer.checks import require_secret_key
from syncer.conf import LOCAL_SECRET_KEY
from tests.support.harness import wait_for
from tests.support.process import ROOT, WorkerProcess, database_url, free_port, manage, start_daphne

KEY = secrets.token_urlsafe(50)
HOST = "search-console.example.com"
_OURS = {
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
}


def production_env() -> dict[str, str]:
    """docs/production.env, the environment the README documents for production."""
    pairs = {}
    for line in (ROOT / "docs" / "production.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def bare_env(**env: str) -> dict[str, str]:
    """This environment without any of the settings above, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in _OURS}
    return {
        **base,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": database_url(),
        **env,
    }


# -- check --deploy --------------------------------------------------------------------


def test_check_deploy_passes_with_the_documented_production_environment():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=bare_env(**production_env(), SECRET_KEY=KEY),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_without_it_and_says_what_to_set():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=bare_env(), timeout=120)
    assert result.returncode != 0
    assert "(syncer.E006) SECRET_KEY is not set and DEBUG is off" in result.stderr
    assert "HINT: Set SECRET_KEY to a long random value" in result.stderr
    assert "security.W008" in result.stderr  # SECURE_SSL_REDIRECT


def test_commands_that_do_not_serve_still_work_without_a_key():
    result = manage("check", env=bare_env(), timeout=120)
    assert result.returncode == 0, result.stderr


def test_only_debug_off_without_a_key_is_refused(settings):
    settings.DEBUG, settings.SECRET_KEY = False, LOCAL_SECRET_KEY
    with pytest.raises(ImproperlyConfigured, match=r"refusing to start the worker"):
        require_secret_key("the worker")
    settings.DEBUG = True  # the documented local try
    require_secret_key("the worker")
    settings.DEBUG, settings.SECRET_KEY = False, KEY
    require_secret_key("the worker")


# -- the worker ------------------------------------------------------------------------


def test_runsyncer_refuses_to_start_without_a_secret_key():
    result = manage("runsyncer", env=bare_env(), timeout=120)
    assert result.returncode == 1
    assert "refusing to start the worker (runsyncer): SECRET_KEY is not set" in result.stderr
    assert "DEBUG=1" in result.stderr
    assert "Traceback" not in result.stderr


def test_runsyncer_starts_with_a_key(transactional_db, tmp_path):
    port = free_port()
    log = tmp_path / "worker.log"
    worker = WorkerProcess(None, log, base_env=bare_env(SECRET_KEY=KEY), metrics_port=port)
    try:
        wait_for(
            lambda: (
                worker.process.poll() is not None
                or _status(f"http://127.0.0.1:{port}/health") == 200
            ),
            what="the worker's /health",
        )
        assert worker.process.poll() is None, log.read_text()[-3000:]
    finally:
        assert worker.terminate(40) == 0, log.read_text()[-3000:]


# -- the web process -------------------------------------------------------------------


def test_daphne_refuses_to_start_without_a_secret_key():
    result = subprocess.run(
        [sys.executable, "-m", "daphne", "-p", str(free_port()), "console.asgi:application"],
        cwd=ROOT,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        "refusing to start the web process (console.asgi): SECRET_KEY is not set" in result.stderr
    )


def test_the_wsgi_application_refuses_without_a_secret_key(settings):
    settings.SECRET_KEY = LOCAL_SECRET_KEY
    sys.modules.pop("console.wsgi", None)
    with pytest.raises(ImproperlyConfigured, match=r"refusing to start the web process \(console"):
        importlib.import_module("console.wsgi")
    sys.modules.pop("console.wsgi", None)


class Daphne:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.process = start_daphne(self.port, env, log)
        wait_for(self._listening, timeout=30, what="daphne to listen")

    def _listening(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def get(self, path: str, **headers: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path, headers={"Host": HOST, **headers})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


@pytest.fixture
def production_daphne(django_db_setup: None, tmp_path: Path) -> Iterator[Daphne]:
    server = Daphne(bare_env(**production_env(), SECRET_KEY=KEY), tmp_path / "daphne.log")
    yield server
    server.stop()


def test_production_environment_redirects_to_https_and_sends_hsts(production_daphne):
    plain = production_daphne.get("/admin/login/")
    assert plain.status == 301
    assert plain.getheader("Location") == f"https://{HOST}/admin/login/"
    # Probes inside the cluster ask over plain HTTP.
    assert production_daphne.get("/api/health").status == 200

    secure = production_daphne.get("/admin/login/", **{"X-Forwarded-Proto": "https"})
    assert secure.status == 200
    assert (
        secure.getheader("Strict-Transport-Security")
        == "max-age=31536000; includeSubDomains; preload"
    )
    cookies = secure.headers.get_all("Set-Cookie") or []
    assert any(c.startswith("csrftoken=") and "Secure" in c for c in cookies), cookies


def https_settings(**env: str) -> list[str]:
    """The HTTPS settings console.settings derives from `env` (the module alone, quickly)."""
    names = "SESSION_COOKIE_SECURE CSRF_COOKIE_SECURE SECURE_HSTS_SECONDS SECURE_SSL_REDIRECT"
    code = f"from console import settings as s; print(*(getattr(s, n) for n in {names.split()!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=bare_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_debug_off_defaults_to_secure_cookies_and_hsts_without_a_redirect():
    assert https_settings() == ["True", "True", "31536000", "False"]
    assert https_settings(DEBUG="1") == ["False", "False", "0", "False"]
    # The demo's plain HTTP on 127.0.0.1.
    assert https_settings(SESSION_COOKIE_SECURE="false", CSRF_COOKIE_SECURE="0")[:2] == [
        "False",
        "False",
    ]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0
