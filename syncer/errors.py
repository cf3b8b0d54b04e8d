"""The exceptions searchsync raises. Adapters translate driver errors into these, so
nothing above a source or a sink ever sees a psycopg or opensearch-py exception.

    SyncError
    ├── ConfigError             the subscription cannot work until someone fixes it
    │   ├── SourceConfigError   bad DSN, missing table, unknown key column, no replica identity
    │   └── SinkConfigError     index name or mappings rejected by OpenSearch
    │       └── ForeignIndex    sweep, alias swap or delete of an index searchsync did
    │                           not create (not adopted): not retried
    ├── RequestTooLarge         OpenSearch refused a bulk for its size (413): send less
    └── UnavailableError        the other side is down or refusing work for now; retry
        ├── SourceUnavailable   connection lost, server restarting, timeouts
        └── SinkUnavailable     OpenSearch unreachable, 429 / 5xx on a whole request

RequestTooLarge is handled by the pipeline: it splits the bulk, and a single document
too large on its own becomes a dead letter. The other two branches are retried with
backoff by the worker: a ConfigError puts the subscription in the `error` status
(someone may create the missing table), an UnavailableError in `reconnecting` (or
`sink_unavailable`, with the batch held). A ConfigError whose `retry` is False (a
ForeignIndex) is not retried: the subscription stays in `error` until its row changes,
since waiting cannot make the index searchsync's. `str(error)` is written for an operator: it
says what is wrong and what to fix, and never holds a password.
"""

from __future__ import annotations


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
