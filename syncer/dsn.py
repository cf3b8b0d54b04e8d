"""Source DSNs: literal or `env:VARNAME`, and their password-free display form."""

from __future__ import annotations

import os
import re

import psycopg.conninfo

from syncer.errors import SourceConfigError

ENV_PREFIX = "env:"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate(dsn: str) -> None:
    """Raise ValueError with a fix-it message if `dsn` is neither `env:VAR` nor a DSN."""
    if not dsn.strip():
        raise ValueError("a DSN is required, e.g. env:SOURCE_DATABASE_URL or postgresql://host/db")
    if dsn.startswith(ENV_PREFIX):
        name = dsn[len(ENV_PREFIX) :]
        if not _ENV_NAME.match(name):
            raise ValueError(f"'{name}' is not an environment variable name (letters, digits, _)")
        return
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"not a valid PostgreSQL DSN: {redact(str(exc))}") from None


def resolve(dsn: str) -> str:
    """Return the literal DSN, reading `env:VAR` from the environment now."""
    if not dsn.startswith(ENV_PREFIX):
        return dsn
    name = dsn[len(ENV_PREFIX) :]
    value = os.environ.get(name)
    if not value:
        raise SourceConfigError(
            f"the source DSN comes from the environment variable {name}, which is not set "
            "in the worker's environment"
        )
    return value


def redact(dsn: str) -> str:
    """Return `dsn` with any password replaced by `***` (env:VAR is shown as is)."""
    from syncer.logconfig import redact as redact_text

    if dsn.startswith(ENV_PREFIX):
        return dsn
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact_text(dsn)
    if "password" not in params:
        return redact_text(dsn)
    params["password"] = "***"
    if "://" in dsn:
        return redact_text(dsn)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
