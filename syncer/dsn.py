"""Source DSNs: literal or `env:VARNAME`, checked, resolved, and shown without a password.

`env:VAR` reads only variables on the allow-list (`SYNCER_SOURCE_DSN_ENV`), never a
secret-named one, and never `DATABASE_URL`; no DSN may point at the console's own
database unless `SYNCER_ALLOW_CONSOLE_DATABASE_SOURCE` is on. A message about a DSN
names the variable and what is wrong, never the value read from it (psycopg's parse
errors quote the text they choke on, so they are never passed on).
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Any

import psycopg.conninfo
from django.conf import settings

from syncer import conf
from syncer.errors import SourceConfigError, UnsetVariable
from syncer.text import HIDDEN, is_secret_name, redact

__all__ = [
    "ENV_PREFIX",
    "console_conninfo",
    "password_of",
    "resolve",
    "unredacted",
    "validate",
]

ENV_PREFIX = "env:"
CONSOLE_DATABASE_VARIABLE = "DATABASE_URL"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
_ALLOW_CONSOLE = "SYNCER_ALLOW_CONSOLE_DATABASE_SOURCE=true"
_DSN_SHAPES = "postgresql://user@host:5432/dbname or host=... dbname=... (with a password)"
# What psycopg's parse error says, without the text it quotes (a password, maybe).
_PARSE_PROBLEMS = (
    ('missing "="', 'a word without "=": write key=value pairs or a postgresql:// URL'),
    ("invalid connection option", "an unknown connection option: check each key's spelling"),
    ("unterminated quoted string", "a quoted value that is never closed"),
    ("invalid URI query parameter", "an unknown query parameter in the URL"),
    ("invalid percent-encoded token", "a bad %-escape in the URL"),
    ("unexpected spaces", "spaces in the URL: write them as %20"),
)


def console_conninfo() -> str:
    """A libpq connection string for the console's own database (Django's default): what
    the worker's locks, leases and push queues connect to."""
    db = settings.DATABASES["default"]
    params: dict[str, Any] = {
        "dbname": db.get("NAME"),
        "user": db.get("USER"),
        "password": db.get("PASSWORD"),
        "host": db.get("HOST"),
        "port": db.get("PORT"),
    }
    params.update(db.get("OPTIONS") or {})
    return psycopg.conninfo.make_conninfo(
        "", **{k: v for k, v in params.items() if v not in (None, "")}
    )


def validate(dsn: str) -> None:
    """Raise ValueError with a fix-it message if `dsn` cannot be a source's DSN."""
    if not dsn.strip():
        raise ValueError("a DSN is required, e.g. env:SOURCE_DATABASE_URL or postgresql://host/db")
    if dsn.startswith(ENV_PREFIX):
        problem = _variable_problem(dsn[len(ENV_PREFIX) :])
        if problem:
            raise ValueError(problem)
        return
    params = _parse(dsn)
    if params is None:
        raise ValueError(f"not a valid PostgreSQL DSN: it has {_parse_problem(dsn)}")
    if params.get("password") == HIDDEN:
        raise ValueError(
            f"{HIDDEN} stands for the stored password only when the DSN is left exactly as "
            "shown (in the admin or an API PATCH); to change the DSN, or in a subscriptions "
            "file, type it whole, password included, or use env:VAR"
        )
    problem = _console_database_problem(params, "this DSN")
    if problem:
        raise ValueError(problem)


def resolve(dsn: str) -> str:
    """The DSN to connect with: the literal one, or `env:VAR` read from the environment now.

    Raise SourceConfigError (naming the variable, never its value) if it may not be used.
    """
    if not dsn.startswith(ENV_PREFIX):
        params = _parse(dsn)
        if params is None:
            raise SourceConfigError(f"the source DSN is not valid: it has {_parse_problem(dsn)}")
        problem = _console_database_problem(params, "the source DSN")
        if problem:
            raise SourceConfigError(problem)
        return dsn
    name = dsn[len(ENV_PREFIX) :]
    problem = _variable_problem(name)
    if problem:
        raise SourceConfigError(problem)
    value = os.environ.get(name)
    if not value:
        raise UnsetVariable(name)
    params = _parse(value)
    if params is None:
        raise SourceConfigError(
            f"the environment variable {name} does not hold a PostgreSQL DSN (it has "
            f"{_parse_problem(value)}); set it to {_DSN_SHAPES}"
        )
    problem = _console_database_problem(params, f"the environment variable {name}")
    if problem:
        raise SourceConfigError(problem)
    return value


def unredacted(submitted: str, stored: str | None) -> str:
    """The DSN to store when `submitted` comes back from a form or an API client.

    A DSN sent back exactly as it was shown (`redact(stored)`, password as `***`) means
    "keep it": the stored DSN, password included. Anything else is the new DSN.
    """
    if stored is not None and submitted != stored and submitted == redact(stored):
        return stored
    return submitted


def password_of(dsn: str) -> str | None:
    """The password a literal DSN carries, or None (none, or not a DSN)."""
    params = _parse(dsn)
    password = None if params is None else params.get("password")
    return None if password is None else str(password)


def _parse(dsn: str) -> dict[str, Any] | None:
    try:
        return psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return None


def _parse_problem(dsn: str) -> str:
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        text = str(exc)
        return next(
            (said for start, said in _PARSE_PROBLEMS if text.startswith(start)), "a syntax error"
        )
    return "a syntax error"


def _variable_problem(name: str) -> str | None:
    """Why `env:<name>` may not be read, or None."""
    if not _ENV_NAME.fullmatch(name):
        return f"'{name}' is not an environment variable name (letters, digits, _)"
    options = conf.source_dsn()
    if name == CONSOLE_DATABASE_VARIABLE:
        if options.allow_console_database:
            return None
        return (
            f"{name} holds the console's own database credentials, not a source's: put the "
            f"source's DSN in a variable of its own (e.g. SOURCE_DATABASE_URL), or set "
            f"{_ALLOW_CONSOLE} to sync from the console's database on purpose"
        )
    if is_secret_name(name):
        return (
            f"{name} is named like a secret (PASSWORD, SECRET, TOKEN, API_KEY), and env: never "
            "reads those; put the source's DSN in a variable such as SOURCE_DATABASE_URL"
        )
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in options.env_allowed):
        allowed = ", ".join(options.env_allowed) or "(none)"
        return (
            f"env:{name} is not allowed: a source DSN may name only the environment variables "
            f"of SYNCER_SOURCE_DSN_ENV ({allowed}); use one of those names, or add {name} "
            "to SYNCER_SOURCE_DSN_ENV"
        )
    return None


def _console_database_problem(params: dict[str, Any], what: str) -> str | None:
    """Why a DSN may not be used because it is the console's own database, or None."""
    if conf.source_dsn().allow_console_database or not _is_console_database(params):
        return None
    return (
        f"{what} points at the console's own database (the host, port and database of "
        f"DATABASE_URL): sync from another database, or set {_ALLOW_CONSOLE} to allow it "
        "on purpose"
    )


def _is_console_database(params: dict[str, Any]) -> bool:
    console = settings.DATABASES["default"]
    return _database_of(params) == (console.get("NAME") or "") and bool(
        _places(str(console.get("HOST") or ""), str(console.get("PORT") or ""))
        & _places(
            str(params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST", "")),
            str(params.get("port") or os.environ.get("PGPORT", "")),
        )
    )


def _database_of(params: dict[str, Any]) -> str:
    # libpq's defaults: the database is named after the user when not given.
    return str(
        params.get("dbname")
        or os.environ.get("PGDATABASE")
        or params.get("user")
        or os.environ.get("PGUSER", "")
    )


def _places(hosts: str, ports: str) -> set[tuple[str, str]]:
    """(host, port) pairs of a libpq host list; every local address is the same place."""
    host_list = [h.strip().lower() for h in hosts.split(",")]
    port_list = [p.strip() or "5432" for p in ports.split(",")]
    if len(port_list) == 1:
        port_list *= len(host_list)
    return {
        ("local" if host in _LOCAL_HOSTS or host.startswith("/") else host, port)
        for host, port in zip(host_list, port_list, strict=False)
    }
