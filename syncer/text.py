"""The one redaction: every text a person or a log sees goes through `redact`.

It hides the passwords of DSNs and URLs (`scheme://user:pw@`, `scheme://:pw@`,
`password=` with or without quotes, `PGPASSWORD=`), `token: ` / `api_key=` / `secret=`
pairs, HTTP credentials (`Authorization: Bearer ...`), and the values of the
environment's secret-named variables (OPENSEARCH_PASSWORD, SECRET_KEY...) wherever they
appear. Logs (syncer.logconfig), the admin, the API, the live monitor, the worker's
`/ready` and the demo all call it; nothing else hides secrets.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

HIDDEN = "***"

# `scheme://user:password@` and `scheme://:password@` (an empty user: redis URLs, libpq).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
# libpq's `password=...`: a quoted value may hold spaces and \' escapes; an unquoted one
# is taken with the words after it up to the next `key=` (`password=two words` is a
# mistake, but its second word is as secret as the first).
_KV_PASSWORD = re.compile(
    r"(?P<head>password\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*(?:'|$)|(?!\*\*\*(?:[\s)\]},;]|$))\S+(?:\s+[^\s=)\]},;]+(?=[\s)\]},;]|$))*)",
    re.IGNORECASE,
)
_SECRET_WORD = r"(?:password|passwd|pwd|secret|secret_key|token|api_key|apikey)"
# `"password": "two words"`: a quoted value, hidden whole.
_KV_SECRET_QUOTED = re.compile(
    rf"(?P<head>(?<![A-Za-z])(?:PG|\w+_)?{_SECRET_WORD}[\"']?\s*[:=]\s*)"
    r"(?P<q>[\"'])(?!\*\*\*(?P=q))(?:(?!(?P=q)).)*(?P=q)",
    re.IGNORECASE,
)
# `password: x`, `?api_key=x&`, `secret=x`, `PGPASSWORD: x`: the value up to a delimiter.
_KV_SECRET = re.compile(
    rf"(?P<head>(?<![A-Za-z])(?:PG|\w+_)?{_SECRET_WORD}[\"']?\s*[:=]\s*[\"']?)"
    r"(?!\*\*\*)[^\s\"',;&}]+",
    re.IGNORECASE,
)
# An HTTP credential: `Authorization: Basic dXNlcjpwdw==`, or a bearer token anywhere
# (the scheme is taken possessively, so `Basic ***` is never taken for a credential).
_AUTH_HEADER = re.compile(
    r"(?P<head>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:Bearer|Basic|Token|ApiKey|Digest)\s+)?+)"
    r"(?!\*\*\*)[^\s\"',;}]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
# Fields whose whole value is a secret, whatever it looks like.
SECRET_FIELD = re.compile(
    r"(?:\w*_)?(?:password|passwd|secret|secret_key|token|authorization|api_?key)", re.IGNORECASE
)
# Environment variables whose values must never appear in a text.
_SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY", re.IGNORECASE)
_MIN_SECRET = 6  # shorter values would blank out ordinary words


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every password, token and credential hidden as `***`.

    `secrets` are the environment's secret values (`environment_secrets()`, read now
    when not given): a caller redacting many texts at once reads them once.
    """
    for secret in environment_secrets() if secrets is None else secrets:
        text = text.replace(secret, HIDDEN)
    text = _URL_PASSWORD.sub(rf"\g<head>{HIDDEN}@", text)
    text = _KV_PASSWORD.sub(rf"\g<head>{HIDDEN}", text)
    text = _KV_SECRET_QUOTED.sub(rf"\g<head>\g<q>{HIDDEN}\g<q>", text)
    text = _KV_SECRET.sub(rf"\g<head>{HIDDEN}", text)
    text = _AUTH_HEADER.sub(rf"\g<head>{HIDDEN}", text)
    return _BEARER.sub(rf"\g<head>{HIDDEN}", text)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (SECRET_KEY...)."""
    return _SECRET_ENV.search(name) is not None


def environment_secrets() -> list[str]:
    """The values of secret-named environment variables, longest first."""
    found = {
        value
        for name, value in os.environ.items()
        if is_secret_name(name) and len(value) >= _MIN_SECRET
    }
    return sorted(found, key=len, reverse=True)


def short(text: str, limit: int = 80) -> str:
    """`text` on one line, password-free, cut to `limit` characters."""
    line = " ".join(redact(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def age_text(when: datetime, now: datetime | None = None) -> str:
    """How long ago `when` was, for a person: `45 s`, `12 min`, `3 h`, `9 d`."""
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
