"""The one redaction (syncer.text.redact): what it hides, and what it leaves alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncer import logconfig
from syncer.text import redact


@pytest.mark.parametrize(
    ("text", "secret", "shown"),
    [
        (
            "postgresql://sync:s3cr3t-pw@db:5432/app",
            "s3cr3t-pw",
            "postgresql://sync:***@db:5432/app",
        ),
        ("postgresql://:s3cr3t-pw@db/app", "s3cr3t-pw", "postgresql://:***@db/app"),
        ("redis://:s3cr3t-pw@cache:6379/0", "s3cr3t-pw", "redis://:***@cache:6379/0"),
        (
            "postgresql://sy%40nc:p%40ss%2Fw0rd@db/app",
            "p%40ss%2Fw0rd",
            "postgresql://sy%40nc:***@db/app",
        ),
        ("postgresql://u:pw@h1:5432,h2:5433/app", "pw@", "postgresql://u:***@h1:5432,h2:5433/app"),
        ("postgresql://u@db/app?password=s3cr3t-pw&sslmode=require", "s3cr3t-pw", None),
        ("host=db password=s3cr3t-pw user=sync", "s3cr3t-pw", "host=db password=*** user=sync"),
        ("host=db password=two words user=sync", "words", "host=db password=*** user=sync"),
        ("(password=two words) failed", "words", "(password=***) failed"),
        ("host=db password='two words' user=sync", "two words", "host=db password=*** user=sync"),
        (
            "host=db password = 'it\\'s secret' user=sync",
            "secret",
            "host=db password = *** user=sync",
        ),
        ("host=db password='never closed", "never closed", "host=db password=***"),
        ("sslpassword=s3cr3t-pw sslkey=/k", "s3cr3t-pw", "sslpassword=*** sslkey=/k"),
        ("PGPASSWORD=s3cr3t-pw PGHOST=db psql", "s3cr3t-pw", "PGPASSWORD=*** PGHOST=db psql"),
        ("PGPASSWORD: s3cr3t-pw", "s3cr3t-pw", "PGPASSWORD: ***"),
        ("DB_PASSWORD: s3cr3t-pw", "s3cr3t-pw", "DB_PASSWORD: ***"),
        ('{"user": "sync", "password": "two words"}', "two words", None),
        ('{"user": "sync", "password": "s3cr3t-pw"}', "s3cr3t-pw", None),
        ("https://admin:os-pass-1@search:9200", "os-pass-1", "https://admin:***@search:9200"),
        ("Authorization: Bearer ss_4f9a8b7c6d5e", "ss_4f9a8b7c6d5e", "Authorization: Bearer ***"),
        ("Authorization: Basic c3luYzpzM2NyM3Q=", "c3luYzpzM2NyM3Q=", None),
        ("GET /api/dlq?api_key=ss_4f9a8b7c6d5e&limit=5", "ss_4f9a8b7c6d5e", None),
        ("token: ss_4f9a8b7c6d5e", "ss_4f9a8b7c6d5e", "token: ***"),
        ("secret_key=django-insecure-xyz", "django-insecure-xyz", "secret_key=***"),
    ],
)
def test_redact_hides_every_shape_of_secret(text: str, secret: str, shown: str | None) -> None:
    hidden = redact(text, secrets=[])
    assert secret not in hidden and "***" in hidden
    if shown is not None:
        assert hidden == shown
    assert redact(hidden, secrets=[]) == hidden  # redacting twice changes nothing more


@pytest.mark.parametrize(
    "text",
    [
        "the token was created for ci",
        "Basic auth is not configured",
        "postgresql://sync@db:5432/app",
        "postgresql://db/app",
        "env:SOURCE_DATABASE_URL",
        "token_name=ci written=10",
        "dead-lettered 3 documents",
        'password authentication failed for user "sync"',
        "host=db dbname=app user=sync",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text, secrets=[]) == text


def test_the_values_of_secret_named_variables_are_hidden_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_KEY", "k3y-of-the-console")
    monkeypatch.setenv("OPENSEARCH_PASSWORD", "os-env-secret-42")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to hide without blanking words
    text = "saw k3y-of-the-console and os-env-secret-42 in abc"
    assert redact(text) == "saw *** and *** in abc"


def test_there_is_one_redaction() -> None:
    root = Path(__file__).resolve().parents[2]
    defined = [
        str(path.relative_to(root))
        for folder in ("syncer", "console")
        for path in (root / folder).rglob("*.py")
        if re.search(r"^\s*def redact\(", path.read_text(), re.MULTILINE)
    ]
    assert defined == ["syncer/text.py"]
    assert logconfig.scrub({"error": "postgresql://:pw-1@h/db"}, secrets=[]) == {
        "error": "postgresql://:***@h/db"
    }
