"""`runsyncer` refuses what it cannot work with in one clear line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess

import psycopg
import pytest

from tests.conftest import ADMIN_DSN
from tests.support.process import database_url, manage


def runsyncer(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return manage("runsyncer", *args, env={**os.environ, **env})


def test_a_missing_console_database_says_to_create_and_migrate_it():
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/searchsync_no_such_db"
    result = runsyncer(DATABASE_URL=url)
    assert result.returncode == 1
    assert "cannot reach the console database" in result.stderr
    assert "searchsync_no_such_db" in result.stderr and "manage.py migrate" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def empty_database():
    name = f"searchsync_unmigrated_{os.getpid()}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_an_unmigrated_console_database_says_to_migrate(empty_database):
    result = runsyncer(DATABASE_URL=empty_database)
    assert result.returncode == 1
    assert "the console database is not set up" in result.stderr
    assert "run `python manage.py migrate`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # no SQL excerpt, no traceback


def test_a_taken_metrics_port_says_to_choose_another(transactional_db, settings):
    url = database_url()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runsyncer("--metrics-port", str(port), DATABASE_URL=url)
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "choose another --metrics-port" in result.stderr
