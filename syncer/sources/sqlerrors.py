"""Translate psycopg errors into searchsync's exception tree, with fix-it wording.

Shared by the sources that talk to a PostgreSQL-protocol server (PostgreSQL, Materialize).
A source whose server words some errors its own way passes `refine`, which sees the
driver error first and may return the exception to raise instead (see
`syncer.sources.materialize.errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import psycopg.errors

from syncer.errors import SourceConfigError, SourceUnavailable, SyncError
from syncer.text import redact

# Connection failures that retrying will not fix: the DSN itself is wrong.
_CONFIG_MARKERS = (
    "password authentication failed",
    "invalid password",  # Materialize's 28P01 (src/pgwire/src/protocol.rs)
    "does not exist",
    "no password supplied",
    "invalid connection option",
    "no pg_hba.conf entry",
    "invalid dsn",
    'missing "="',
    "could not translate host name",
)


def describe(exc: BaseException) -> str:
    """One line, without the password, from a psycopg error."""
    text = " ".join(str(exc).split())
    return redact(text) or type(exc).__name__


Refine = Callable[[str, psycopg.Error], SyncError | None]


@contextmanager
def translated(action: str, refine: Refine | None = None) -> Iterator[None]:
    """Run a block of source I/O; re-raise driver errors as SourceConfigError/Unavailable."""
    try:
        with _refined(action, refine):
            yield
    except (
        psycopg.errors.InsufficientPrivilege,
        psycopg.errors.UndefinedTable,
        psycopg.errors.UndefinedColumn,
        psycopg.errors.ObjectNotInPrerequisiteState,
        psycopg.errors.InvalidParameterValue,
        psycopg.errors.FeatureNotSupported,
        psycopg.errors.InvalidName,
        psycopg.errors.UndefinedObject,
    ) as exc:
        raise SourceConfigError(f"{action}: {describe(exc)}") from exc
    except psycopg.OperationalError as exc:
        message = describe(exc)
        if any(marker in message.lower() for marker in _CONFIG_MARKERS):
            raise SourceConfigError(f"{action}: {message}; check the source DSN") from exc
        raise SourceUnavailable(f"{action}: {message}") from exc
    except psycopg.ProgrammingError as exc:
        if "conninfo" in str(exc) or "dsn" in str(exc).lower():
            raise SourceConfigError(f"{action}: {describe(exc)}; check the source DSN") from exc
        raise SourceConfigError(f"{action}: {describe(exc)}") from exc
    except psycopg.Error as exc:
        # Anything else from the server (admin shutdown, serialization, I/O): retry.
        raise SourceUnavailable(f"{action}: {describe(exc)}") from exc
    except OSError as exc:
        raise SourceUnavailable(f"{action}: {describe(exc)}") from exc


@contextmanager
def _refined(action: str, refine: Refine | None) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        better = refine(action, exc) if refine is not None else None
        if better is None:
            raise
        raise better from exc
