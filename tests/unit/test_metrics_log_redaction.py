"""Worker logs: JSON or console lines, and no secret in either."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from syncer.logconfig import logging_config
from syncer.text import redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://sync:s3cr3t-pw@db:5432/app", "s3cr3t-pw"),
        ("host=db password='two words' user=sync", "two words"),
        ("host=db password=s3cr3t-pw user=sync", "s3cr3t-pw"),
        ('{"user": "sync", "password": "s3cr3t-pw"}', "s3cr3t-pw"),
        ("https://admin:os-pass-1@search:9200", "os-pass-1"),
        ("Authorization: Bearer ss_4f9a8b7c6d5e", "ss_4f9a8b7c6d5e"),
        ("headers={'authorization': 'Bearer ss_4f9a8b7c6d5e'}", "ss_4f9a8b7c6d5e"),
        ("Authorization: Basic c3luYzpzM2NyM3Q=", "c3luYzpzM2NyM3Q="),
        ("authorization=ss_4f9a8b7c6d5e", "ss_4f9a8b7c6d5e"),
        ("GET /api/dlq?api_key=ss_4f9a8b7c6d5e&limit=5", "ss_4f9a8b7c6d5e"),
        ("token: ss_4f9a8b7c6d5e", "ss_4f9a8b7c6d5e"),
    ],
)
def test_redact_hides_passwords_and_tokens(text, secret):
    hidden = redact(text)
    assert secret not in hidden and "***" in hidden


@pytest.mark.parametrize(
    "text",
    [
        "the token was created for ci",
        "Basic auth is not configured",
        "postgresql://sync@db:5432/app",
        "token_name=ci written=10",
        "dead-lettered 3 documents",
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


@pytest.fixture(params=["json", "console"])
def captured(request, monkeypatch) -> Iterator[tuple[str, io.StringIO]]:
    """A logger wired like the worker's, in the given LOG_FORMAT, writing to a buffer."""
    monkeypatch.setenv("OPENSEARCH_PASSWORD", "os-env-secret-42")
    config = dict(logging_config(request.param, "INFO")["formatters"]["structured"])
    formatter = config.pop("()")(**config)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"tests.redaction.{request.param}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield request.param, out
    logger.removeHandler(handler)


def test_log_lines_carry_no_secret_in_fields_messages_or_tracebacks(captured):
    fmt, out = captured
    log = structlog.get_logger(f"tests.redaction.{fmt}")
    log.info(
        "source_connected",
        subscription="orders",
        dsn="postgresql://sync:dsn-secret-1@db/app",
        password="field-secret-2",
        headers={"Authorization": "Bearer header-secret-3", "Accept": "json"},
        reasons=["cannot reach https://admin:url-secret-4@search:9200"],
        count=3,
    )
    log.warning("opensearch_login", error="refused user admin with os-env-secret-42")
    try:
        raise ConnectionError("connecting to postgresql://sync:trace-secret-5@db/app failed")
    except ConnectionError:
        log.exception("pipeline_crashed", subscription="orders")
    logging.getLogger(f"tests.redaction.{fmt}").info("request Authorization: Bearer std-secret-6")
    text = out.getvalue()
    for secret in ("dsn-secret-1", "field-secret-2", "header-secret-3", "url-secret-4"):
        assert secret not in text
    for secret in ("os-env-secret-42", "trace-secret-5", "std-secret-6"):
        assert secret not in text
    assert "orders" in text and "pipeline_crashed" in text


def test_json_format_writes_one_object_per_line_and_console_does_not(captured):
    fmt, out = captured
    log = structlog.get_logger(f"tests.redaction.{fmt}")
    log.info("sync_progress", subscription="orders", changes=12, flush_ms_avg=4.5)
    log.info("status_changed", subscription="orders", status="caught_up")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        first = json.loads(lines[0])
        assert first["event"] == "sync_progress" and first["subscription"] == "orders"
        assert first["changes"] == 12 and first["level"] == "info" and "timestamp" in first
    else:
        for line in lines:
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
        assert "sync_progress" in lines[0] and "changes=12" in lines[0]
