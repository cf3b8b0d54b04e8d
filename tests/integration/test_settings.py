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


def test_no_bulk_in_flight_fails_the_system_check_and_says_what_it_is():
    result = check(SYNCER_BULK_CONCURRENCY="0")
    assert result.returncode != 0
    assert "syncer.E016" in result.stderr
    assert "SYNCER_BULK_CONCURRENCY must be at least 1" in result.stderr
    assert check(SYNCER_BULK_CONCURRENCY="4").returncode == 0


def test_defaults_pass_the_system_check():
    result = check()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"LIVE_MATCH_QUEUE_SIZE": "0"},
            "LIVE_MATCH_QUEUE_SIZE must be a whole number of at least 1, not 0",
        ),
        (
            {"LIVE_MATCH_QUEUE_SIZE": "10.5"},
            "LIVE_MATCH_QUEUE_SIZE must be a whole number of at least 1, not 10.5",
        ),
        (
            {"LIVE_WEBSOCKET_SEND_TIMEOUT": "0"},
            "LIVE_WEBSOCKET_SEND_TIMEOUT must be a positive number of seconds, not 0",
        ),
        (
            {"LIVE_CHECKPOINT_HOLD_SECONDS": "300"},
            "LIVE_CHECKPOINT_HOLD_SECONDS (300) must be at least 0 and below "
            "LIVE_NATS_DUPLICATE_WINDOW_SECONDS (300)",
        ),
        (
            {"LIVE_CHECKPOINT_HOLD_SECONDS": "90", "LIVE_NATS_DUPLICATE_WINDOW_SECONDS": "60"},
            "LIVE_CHECKPOINT_HOLD_SECONDS (90) must be at least 0 and below "
            "LIVE_NATS_DUPLICATE_WINDOW_SECONDS (60)",
        ),
    ],
)
def test_live_matching_settings_that_cannot_work_fail_the_system_check(env, says):
    result = check(**env)
    assert result.returncode != 0
    assert "syncer.E015" in result.stderr and says in result.stderr


def test_live_matching_settings_of_their_own_pass_the_system_check():
    result = check(
        LIVE_MATCH_QUEUE_SIZE="500",
        LIVE_WEBSOCKET_SEND_TIMEOUT="0.5",
        LIVE_CHECKPOINT_HOLD_SECONDS="0",
        SYNCER_LIVE_QUEUE_SIZE="7",
    )
    assert result.returncode == 0, result.stderr
