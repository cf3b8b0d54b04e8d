"""The exceptions searchsync raises. Adapters translate driver errors into these, so
nothing above a source or a sink ever sees a psycopg or opensearch-py exception.

    SyncError
    ├── ConfigError             the subscription cannot work until someone fixes it
    │   ├── SourceConfigError   bad DSN, missing table, unknown key column, no replica identity
    │   │   └── UnsetVariable   an `env:VAR` DSN names a variable the worker's environment lacks
    │   └── SinkConfigError     index name or mappings rejected by OpenSearch
    │       └── ForeignIndex    sweep, alias swap or delete of an index searchsync did
    │                           not create (not adopted): not retried
    ├── RequestTooLarge         OpenSearch refused a bulk for its size (413): send less
    ├── UnavailableError        the other side is down or refusing work for now; retry
    │   ├── SourceUnavailable   connection lost, server restarting, timeouts
    │   ├── SinkUnavailable     OpenSearch unreachable, 429 / 5xx on a whole request
    │   └── ConsoleDatabaseUnavailable  the worker cannot read or write the console's tables
    ├── WorkerError             the worker cannot go on as it is
    │   ├── OwnershipLost       the lock connection failed: every lock it held is gone
    │   └── MetricsPortUnavailable  (also OSError) --metrics-port cannot be listened on
    ├── DeclarationError        (also ValueError) a subscriptions file that cannot be
    │                           applied; `problems` lists every reason, as values
    ├── FilterError             (also ValueError) a live subscription's filter that cannot
    │                           be registered; `problems` lists each reason and its offset
    └── OperatorError           what an operator asked for cannot be carried out
        ├── UnknownSubscription (also LookupError) no subscription has that name
        ├── InvalidKey          (also ValueError) a document key that does not fit the
        │                       subscription's key columns; the message names them
        ├── DeadLettersRemain   (also ValueError) a delete that would lose dead letters
        ├── IndexNameTaken      (also ValueError) declared index names clash with others'
        ├── TooManyForARequest  (also ValueError) more dead letters than one web request may touch
        ├── RetryAborted        OpenSearch refused a dead-letter retry as a whole
        ├── DeadLetterFileRefused  (also ValueError) a `dlq import` file refused whole: the
        │                       line and the field, or the unknown subscriptions
        ├── InvalidLiveSubscriptions  (also ValueError) live subscriptions refused whole;
        │                       `problems` lists every reason (entry, field, message, position)
        ├── UnknownLiveSubscription  (also LookupError) none with that id among the caller's own
        ├── NotPermitted        (also PermissionError) the user may not view sync subscriptions
        ├── QuotaExceeded       more live subscriptions than an owner, or all, may have
        ├── NotPushable         (also ValueError) documents posted to a subscription that
        │                       is not of kind push
        ├── PushQueueFull       a push subscription's queue is at its limit: back off
        ├── VerificationRefused  (also ValueError) a verification that cannot start as asked
        │   └── VerificationActive  the subscription has one requested or running already
        └── NotCaughtUp         the subscription did not write up to a verification's
                                snapshot in time

RequestTooLarge is handled by the pipeline: it splits the bulk, and a single document
too large on its own becomes a dead letter. ConfigError and UnavailableError are retried
with backoff by the worker: a ConfigError puts the subscription in the `error` status
(someone may create the missing table), an UnavailableError in `reconnecting` (or
`sink_unavailable`, with the batch held). A ConfigError whose `retry` is False (a
ForeignIndex) is not retried: the subscription stays in `error` until its row changes,
since waiting cannot make the index searchsync's. The other branches never reach a
pipeline: the worker stops on a WorkerError (or, for OwnershipLost, stops every pipeline
and reconnects); the admin, the commands and the API turn a DeclarationError or an
OperatorError into their own refusal (a form error, a CommandError, a 403/404/409/422/429/503).
`str(error)` is written for an operator: it says what is wrong and what to fix, and
never holds a password.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SyncError(Exception):
    """Base of every error searchsync raises on purpose."""


class ConfigError(SyncError):
    """The subscription's configuration does not match the systems it points at."""

    retry = True
    """Whether trying again later may succeed without anyone changing the subscription."""


class SourceConfigError(ConfigError):
    """The source cannot be read as configured."""


class SinkConfigError(ConfigError):
    """OpenSearch refuses the index as configured."""


class ForeignIndex(SinkConfigError):
    """Searchsync did not create the index, and the subscription does not adopt it.

    Writing into it is allowed; sweeping it, swapping an alias away from it or deleting
    it would remove another application's documents, so it is refused.
    """

    retry = False


class UnavailableError(SyncError):
    """A system is unreachable or temporarily refusing work."""


class SourceUnavailable(UnavailableError):
    """The source database cannot be reached right now."""


class SinkUnavailable(UnavailableError):
    """OpenSearch cannot be reached or is rejecting whole requests right now."""


class RequestTooLarge(SyncError):
    """OpenSearch refused a request for its size (HTTP 413, `http.max_content_length`)."""


class UnsetVariable(SourceConfigError):
    """`env:VAR` names an allowed variable that the process's environment lacks."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the source DSN comes from the environment variable {name}, which is not set "
            "in the worker's environment"
        )
        self.name = name


class ConsoleDatabaseUnavailable(UnavailableError):
    """The console's own database cannot be written: checkpoints cannot be saved."""


# -- the worker --------------------------------------------------------------------------


class WorkerError(SyncError):
    """The worker cannot go on as it is."""


class OwnershipLost(WorkerError):
    """The lock connection failed: every lock it held is gone."""


class MetricsPortUnavailable(WorkerError, OSError):
    """The metrics port cannot be listened on (taken, or not allowed)."""


# -- the subscriptions file --------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One reason a subscriptions file cannot be applied, e.g.
    `subscription 'orders'` / `source.relation` / `required; add it`."""

    entry: str
    """The subscription it is about (`subscription 'orders'`, or `subscriptions[0]` when
    its name is unusable); for the file as a whole, the file (`orders.yaml, line 3,
    column 1`); empty for the note that more problems were left out."""
    path: str
    """The field in the file's terms (`source.relation`, `index.mappings.title`); empty
    when the problem is the entry's or the file's as a whole."""
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.entry, self.path, self.message) if part)


class DeclarationError(SyncError, ValueError):
    """The subscriptions file cannot be applied; `problems` says every reason."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.errors))

    @property
    def errors(self) -> list[str]:
        """The problems as the command prints them, one line each."""
        return [str(problem) for problem in self.problems]


# -- live subscriptions' filters --------------------------------------------------------


@dataclass(frozen=True)
class FilterProblem:
    """One reason a filter is refused: where in its text (a character offset; None when
    it is about the filter as a whole) and what to change."""

    position: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.position is None else f"at {self.position}: {self.message}"


class FilterError(SyncError, ValueError):
    """A live subscription's filter cannot be registered; `problems` says every reason."""

    def __init__(self, problems: Sequence[FilterProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


# -- operators' requests -----------------------------------------------------------------


class OperatorError(SyncError):
    """What an operator asked for (in the admin, a command or the API) cannot be done."""


class UnknownSubscription(OperatorError, LookupError):
    """No subscription has the name given.

    `name` is one name (shown quoted, as repr) or several, as typed on the command line
    (shown as typed). `known` lists the names there are, for the callers that show them.
    """

    def __init__(self, name: str | Sequence[str], known: Sequence[str] | None = None) -> None:
        self.names = [name] if isinstance(name, str) else list(name)
        self.known = None if known is None else list(known)
        shown = repr(name) if isinstance(name, str) else ", ".join(self.names)
        message = f"no subscription named {shown}"
        if self.known is not None:
            message += f" (known: {', '.join(self.known) or 'none'})"
        super().__init__(message)


class InvalidKey(OperatorError, ValueError):
    """A document key (a document id, as the monitor and the dead letters show it) that
    does not fit the subscription's key columns; the message names them and the format."""


class DeadLettersRemain(OperatorError, ValueError):
    """Subscriptions to delete still have dead letters, and deleting them was not forced.

    A subscription's dead letters go with it, and then cannot be retried or read;
    each surface says how to force it (`force=true`, `--force`, a ticked box).
    """

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = dict(sorted(counts.items()))
        total = sum(self.counts.values())
        letters = f"{total:,} dead letter{'s' if total != 1 else ''}"
        if len(self.counts) == 1:
            (name,) = self.counts
            who = f"subscription {name} still has {letters}, which would be deleted with it"
        else:
            listed = ", ".join(f"{name} ({count:,})" for name, count in self.counts.items())
            who = f"subscriptions {listed} still have {letters}, which would be deleted with them"
        super().__init__(
            f"{who}; retry them or keep a copy first (manage.py dlq retry|list --json "
            "--subscription NAME), or force the delete"
        )


class IndexNameTaken(OperatorError, ValueError):
    """Declared index names clash with other subscriptions'; `errors` is (name, message)."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"subscription {n}: {m}" for n, m in self.errors))


class TooManyForARequest(OperatorError, ValueError):
    """A retry or purge from the API or the admin would touch more than SYNCER_API_DLQ_MAX
    entries; nothing was done. The message says how to narrow it or where to go instead."""


class RetryAborted(OperatorError):
    """OpenSearch refused a whole retry request; `report` counts what was done before."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class DeadLetterFileRefused(OperatorError, ValueError):
    """A dead-letter file (`dlq import`) refused whole, so nothing of it was imported.

    `line` is the line at fault (0 when the refusal is the file's as a whole: unknown
    subscriptions, a missing summary); the message names it, and the field.
    """

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line
        """The dead-letter retry's RetryReport (syncer.operations.dead_letters), which
        this module, below everything, cannot name."""


# -- live subscriptions ------------------------------------------------------------------


@dataclass(frozen=True)
class LiveSubscriptionProblem:
    """One reason a live subscription cannot be registered, e.g. entry 2 / `filter` /
    `unknown variable 'dc'` / position 4."""

    entry: int | None
    """Which of the registrations asked for (0-based); None when the request as a whole is
    at fault (a query's gateway_id)."""
    field: str
    """`gateway_id`, `subscription`, `filter` or `delivery`."""
    message: str
    position: int | None = None
    """For a filter: the 0-based character offset of the problem in its text, when known."""

    def __str__(self) -> str:
        where = self.field if self.position is None else f"{self.field} (at {self.position})"
        prefix = "" if self.entry is None else f"[{self.entry}] "
        return f"{prefix}{where}: {self.message}"


class InvalidLiveSubscriptions(OperatorError, ValueError):
    """Live subscriptions that cannot be registered; none of the batch was."""

    def __init__(self, problems: Sequence[LiveSubscriptionProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


class UnknownLiveSubscription(OperatorError, LookupError):
    """No live subscription of the caller's has that id: another owner's is unknown too,
    so that ids never tell whether they exist."""

    def __init__(self, live_id: object) -> None:
        super().__init__(
            f"no live subscription {live_id} of yours; it may have expired (heartbeat more "
            "often than the TTL) or been deleted: register it again"
        )
        self.live_id = live_id


class NotPermitted(OperatorError, PermissionError):
    """The user lacks a permission the request needs; the message names it."""


class QuotaExceeded(OperatorError):
    """Registering would take the live subscriptions past a quota; nothing was registered.

    `scope` is `owner` (LIVE_SUBSCRIPTIONS_PER_OWNER), `global` (LIVE_SUBSCRIPTIONS_MAX) or
    `unpinned` (of one subscription, the filters that pin no value nor bound a number:
    LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION); `active` counts the unexpired ones
    before this request, `requested` what it asked for.
    """

    SETTINGS = {
        "owner": "LIVE_SUBSCRIPTIONS_PER_OWNER",
        "global": "LIVE_SUBSCRIPTIONS_MAX",
        "unpinned": "LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION",
    }

    def __init__(
        self, limit: int, scope: str, active: int, requested: int, subscription: str = ""
    ) -> None:
        self.limit = limit
        self.scope = scope
        self.active = active
        self.requested = requested
        self.subscription = subscription
        """For `unpinned`: the sync subscription whose quota it is."""
        setting = self.SETTINGS.get(scope, scope)
        if scope == "unpinned":
            super().__init__(
                f"live subscription quota exceeded: subscription {subscription} has "
                f"{active:,} live subscriptions whose filter pins no value, and may have at "
                f"most {limit:,} ({setting}), so {requested:,} more cannot be registered; "
                'pin a value at the top level of the filter (doc.tenant == "acme" && ..., '
                "or doc.id in [...]) or bound a number there (doc.total > 500 && ...) so "
                "that only the changes carrying it are compared"
            )
            return
        who = "this owner has" if scope == "owner" else "all owners together have"
        super().__init__(
            f"live subscription quota exceeded: {who} {active:,} and may have at most "
            f"{limit:,} ({setting}), so {requested:,} more cannot be registered; delete "
            "some, or let unused ones expire, and try again"
        )


class NotPushable(OperatorError, ValueError):
    """Documents were posted to a subscription whose changes come from a database."""


class PushQueueFull(OperatorError):
    """A push subscription's queue holds as many operations as it may (SYNCER_PUSH_QUEUE_LIMIT):
    the client should wait `retry_after` seconds and send again."""

    def __init__(self, name: str, queued: int, limit: int, retry_after: int = 1) -> None:
        self.queued, self.limit, self.retry_after = queued, limit, retry_after
        super().__init__(
            f"the push queue of subscription {name} is full ({queued:,} operations waiting "
            f"to be indexed, limit {limit:,}); retry after {retry_after} s and check that "
            "its worker keeps up"
        )


class VerificationRefused(OperatorError, ValueError):
    """A verification cannot start as asked (says why: the kind, a copy under way, a
    verification already running, a bad key)."""


class VerificationActive(VerificationRefused):
    """The subscription has a verification requested or running already."""

    def __init__(self, subscription: str, verification_id: int) -> None:
        self.verification_id = verification_id
        super().__init__(
            f"subscription {subscription!r} has verification {verification_id} requested "
            "or running already: wait for it to end"
        )


class NotCaughtUp(OperatorError):
    """The subscription did not write up to a verification's snapshot in time."""
