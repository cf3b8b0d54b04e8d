"""What Materialize's errors mean for a subscription, by what Materialize really sends.

Materialize answers most failures with SQLSTATE XX000, so the code alone does not
tell a missing view from a crashed replica; its message does. Read from its source
(MaterializeInc/materialize):

- `src/adapter/src/error.rs`: `AdapterError::Catalog` and `AdapterError::PlanError`
  (other than a few variants) are XX000. So are "unknown catalog item 'x'", "unknown
  schema 'x'", "unknown database 'x'" (`src/sql/src/catalog.rs`, `CatalogError`) and
  "unknown cluster 'x'", and every statement that does not plan (an unknown column or
  function of a `SELECT` relation). `AdapterError::Unauthorized` is 42501
  "permission denied for ..." (`src/sql/src/rbac.rs`). `ConcurrentDependencyDrop` is
  42704 "relation 'x' was dropped".
- `src/pgwire/src/protocol.rs`: a bad password is FATAL 28P01 "invalid password"
  (handled by `sqlerrors` with the other DSN problems); an error in a SUBSCRIBE's
  output is sent as XX000 during FETCH, whatever its cause.
- `src/compute/src/sink/subscribe.rs` and `src/storage-types/src/errors.rs`: a
  dataflow error poisons the SUBSCRIBE, which then only repeats it: "Evaluation
  error: division by zero", "Decode error: ...", "Source error: ...", "Envelope
  error: ...".
- `src/adapter/src/active_compute_sink.rs`: dropping an input ends the SUBSCRIBE with
  "subscribe has been terminated because underlying relation \"db.schema.x\" was
  dropped" (or `cluster "x"`); newer versions say "query could not complete because
  relation \"x\" was dropped" or send `ConcurrentDependencyDrop`.
- An `AS OF` below what Materialize still holds: "Timestamp (t) is not valid for all
  inputs: [...]" (XX000, `src/adapter/src/coord/timestamp_selection.rs`) or, since
  the constraint-based timestamp selection, "could not find a valid timestamp for
  the query" (22000, `AdapterError::ImpossibleTimestampConstraints`). The source
  answers it by reading the view again (`compacted`).

Everything else (connection refused or lost, 57P01 admin shutdown, 53xxx, 57014,
a SUBSCRIBE that fell behind, "internal error: ...") is unavailability: reconnect.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from syncer.errors import SourceConfigError, SyncError
from syncer.sources.sqlerrors import describe
from syncer.sources.sqlerrors import translated as sql_translated

# Both wordings of a refused AS OF (see the module docstring).
_COMPACTED = ("is not valid for all inputs", "could not find a valid timestamp")
_UNKNOWN = re.compile(r"unknown (catalog item|schema|database|cluster) '([^']*)'")
_DATAFLOW = ("Evaluation error:", "Decode error:", "Source error:", "Envelope error:")
_DROPPED = re.compile(r"\b(relation|cluster|collection) (\"[^\"]*\"|'[^']*'|\S+) was dropped")

_FIX_UNKNOWN = {
    "catalog item": "create it, or fix source.relation (an unqualified name is looked up "
    "in database materialize, schema public)",
    "schema": "fix the schema in source.relation",
    "database": "fix the database in source.relation",
    "cluster": "create the cluster, or fix source.cluster",
}


def unknown_relation(error: BaseException) -> bool:
    """Whether Materialize refused a relation's name: no such item, schema or database."""
    match = _UNKNOWN.search(str(error.__cause__ or error))
    return match is not None and match.group(1) != "cluster"


def compacted(error: BaseException) -> bool:
    """Whether Materialize refused an AS OF because it no longer holds that time."""
    text = str(error.__cause__ or error).lower()
    return any(marker.lower() in text for marker in _COMPACTED)


@contextmanager
def translated(action: str, *, planning: bool = False) -> Iterator[None]:
    """`sqlerrors.translated` with Materialize's wording. `planning`: the block declares
    the SUBSCRIBE, where an XX000 means the statement does not plan."""

    def refine(what: str, exc: psycopg.Error) -> SyncError | None:
        return classify(what, exc, planning=planning)

    with sql_translated(action, refine):
        yield


def classify(action: str, exc: psycopg.Error, *, planning: bool = False) -> SyncError | None:
    """The error to raise for a Materialize error, or None for the generic rules."""
    message = _primary(exc)
    if any(marker in message for marker in _COMPACTED):
        return None  # the source's refused-resume path looks at it
    unknown = _UNKNOWN.search(message)
    if unknown is not None:
        kind, name = unknown.groups()
        what = "relation" if kind == "catalog item" else kind
        return SourceConfigError(
            f"{action}: Materialize has no {what} {name!r} ({message}); {_FIX_UNKNOWN[kind]}"
        )
    dropped = _DROPPED.search(message)
    if dropped is not None or "active cluster has been dropped" in message:
        cluster = dropped is None or dropped.group(1) == "cluster"
        fix = "source.cluster" if cluster else "source.relation"
        return SourceConfigError(
            f"{action}: {message}; the subscription stays in error until it exists again "
            f"(create it, or fix {fix})"
        )
    if message.startswith(_DATAFLOW):
        return SourceConfigError(
            f"{action}: Materialize cannot compute the view ({message}); fix the rows or the "
            "view definition that cause it, then resync the subscription (resuming from the "
            "checkpoint would replay the error)"
        )
    if exc.sqlstate == "42501":
        return SourceConfigError(
            f"{action}: {describe(exc)}; grant that privilege to the role of the source DSN"
        )
    if planning and exc.sqlstate == "XX000" and not message.startswith("internal error"):
        return SourceConfigError(
            f"{action}: Materialize cannot plan the SUBSCRIBE ({message}); fix source.relation"
        )
    return None


def _primary(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.sqlstate else None
    return " ".join((primary or str(exc)).split())
