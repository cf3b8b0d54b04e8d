"""How Materialize's errors are classified, including wordings of versions the double
does not speak (the integration tests drive the double's own through the adapter)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from syncer.errors import SourceConfigError, SourceUnavailable
from syncer.sources.materialize.errors import compacted, translated


def raised(exc: psycopg.Error, *, planning: bool = False) -> Exception:
    try:
        with translated("reading changes of orders_mv", planning=planning):
            raise exc
    except (SourceConfigError, SourceUnavailable) as translated_exc:
        return translated_exc
    raise AssertionError("nothing raised")


@pytest.mark.parametrize(
    ("error", "planning", "says"),
    [
        (errors.InternalError_("unknown catalog item 'orders_mv'"), True, "create it, or fix"),
        (errors.InternalError_("unknown cluster 'serving'"), False, "fix source.cluster"),
        (errors.InternalError_("unknown database 'db'"), True, "fix the database"),
        # Newer versions: a dependency dropped mid-query (ConcurrentDependencyDrop, 42704).
        (errors.UndefinedObject("relation 'u42' was dropped"), False, "fix source.relation"),
        (
            errors.InternalError_('query could not complete because cluster "c" was dropped'),
            False,
            "fix source.cluster",
        ),
        (
            errors.InvalidTransactionState("the transaction's active cluster has been dropped"),
            False,
            "fix source.cluster",
        ),
        # Newer versions send an evaluation error with its class-22 code.
        (errors.DivisionByZero("Evaluation error: division by zero"), False, "resync"),
        (errors.InternalError_("Decode error: bad utf-8 (original bytes: ff)"), False, "resync"),
        (errors.InsufficientPrivilege('permission denied for CLUSTER "c"'), False, "grant"),
        (errors.InternalError_('column "nope" does not exist'), True, "cannot plan"),
    ],
)
def test_configuration_errors_say_what_to_fix(
    error: psycopg.Error, planning: bool, says: str
) -> None:
    result = raised(error, planning=planning)
    assert isinstance(result, SourceConfigError)
    assert says in str(result) and str(result).startswith("reading changes of orders_mv: ")


@pytest.mark.parametrize(
    ("error", "planning"),
    [
        (errors.AdminShutdown("terminating connection due to administrator command"), False),
        (errors.OutOfMemory("SUBSCRIBE fell behind: the client did not read results"), False),
        (errors.InsufficientResources("creating connection would violate max_connections"), True),
        (errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (errors.InternalError_("internal error: replica went away"), True),
        (errors.InternalError_('column "nope" does not exist'), False),  # not while planning
        (psycopg.OperationalError("connection refused"), False),
    ],
)
def test_unavailability_reconnects(error: psycopg.Error, planning: bool) -> None:
    assert isinstance(raised(error, planning=planning), SourceUnavailable)


@pytest.mark.parametrize(
    "error",
    [
        errors.InternalError_(
            "Timestamp (17) is not valid for all inputs: [(User(1), Antichain { elements: [20] })]"
        ),
        errors.DataException("could not find a valid timestamp for the query"),
    ],
)
def test_a_refused_as_of_is_recognised_in_both_wordings(error: psycopg.Error) -> None:
    result = raised(error, planning=True)
    assert isinstance(result, SourceUnavailable) and compacted(result)
