"""Settings from the environment: a wrong value is named, with what it should be."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.process import manage


def check(**env: str) -> subprocess.CompletedProcess[str]:
    return manage("check", env={**os.environ, **env})


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        (
            "SYNCER_SHUTDOWN_TIMEOUT",
            "thirty",
            "SYNCER_SHUTDOWN_TIMEOUT must be a number, not 'thirty'",
        ),
        ("SYNCER_BACKOFF_CAP", "-5", "SYNCER_BACKOFF_CAP must not be negative"),
        ("SYNCER_SLOT_WAL_WARN_BYTES", "1GB", "SYNCER_SLOT_WAL_WARN_BYTES must be a number"),
        ("SECURE_HSTS_SECONDS", "1y", "SECURE_HSTS_SECONDS must be a number, not '1y'"),
        (
            "SECURE_PROXY_SSL_HEADER",
            "https",
            "SECURE_PROXY_SSL_HEADER must be a header and its HTTPS value, "
            "e.g. X-Forwarded-Proto,https; not 'https'",
        ),
    ],
)
def test_a_malformed_number_names_the_variable(name, value, says):
    result = check(**{name: value})
    assert result.returncode != 0
    assert says in result.stderr


def test_an_unknown_log_format_fails_the_system_check():
    result = check(LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "syncer.E004" in result.stderr


def test_defaults_pass_the_system_check():
    result = check()
    assert result.returncode == 0, result.stderr
