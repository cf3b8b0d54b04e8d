"""How searchsync reaches OpenSearch: the one client factory and the one error translator.

Every client (the sink's, the alias swap's, the console's document read and live check,
the worker's /ready probe) is built from `options()`, and every opensearch-py error is
re-raised by `translated()` as a syncer.errors one, so nothing above this package catches
an opensearch-py exception. The translator's rule: no answer, 408, 429 and 5xx mean
OpenSearch is unavailable for now (retry later); any other refusal is the configuration's.
What OpenSearch answered stays readable on the raised error through `answer_of()`;
`none_if()` takes an expected refusal (404: there is none) as an answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from opensearchpy import AsyncOpenSearch, JSONSerializer, OpenSearch
from opensearchpy import exceptions as os_errors
from opensearchpy.exceptions import SerializationError

from syncer import jsonload
from syncer.errors import RequestTooLarge, SinkConfigError, SinkUnavailable
from syncer.sinks.opensearch.connection import Connection
from syncer.text import redact

T = TypeVar("T")

_REASON_LIMIT = 2000

INDEX_NOT_FOUND = "index_not_found_exception"
"""OpenSearch's error type for a name that is no index and no alias."""


class _Serializer(JSONSerializer):
    """opensearch-py's serializer, reading answers with `syncer.jsonload`: a bulk answer
    is parsed once per document written (an item each), 2x faster than with `json`."""

    def loads(self, s: str) -> Any:
        try:
            return jsonload.loads(s)
        except (ValueError, TypeError) as exc:
            raise SerializationError(s, exc) from exc


_SERIALIZER = _Serializer()


def options(connection: Connection, timeout: float) -> dict[str, Any]:
    """The client options for `connection`, sync or async alike."""
    # No client retries: the callers retry with their own backoff, or answer at once.
    result: dict[str, Any] = {"timeout": timeout, "max_retries": 0}
    if connection.user:
        result["http_auth"] = (connection.user, connection.password)
    if connection.url.startswith("https://"):
        result["verify_certs"] = connection.verify_certs
        if connection.ca_certs:
            result["ca_certs"] = connection.ca_certs
    return result


def async_client(connection: Connection, timeout: float) -> AsyncOpenSearch:
    return AsyncOpenSearch(
        hosts=[connection.url], serializer=_SERIALIZER, **options(connection, timeout)
    )


def sync_client(connection: Connection, timeout: float) -> OpenSearch:
    """For code in a plain thread (the worker's /ready probe), not on the event loop."""
    return OpenSearch(
        hosts=[connection.url], serializer=_SERIALIZER, **options(connection, timeout)
    )


@dataclass(frozen=True)
class Answer:
    """What OpenSearch answered to a request that failed. Every text is redacted."""

    status: int
    """The HTTP status; 0 when no answer came (unreachable, timed out)."""
    error_type: str = ""
    """OpenSearch's error type (`index_not_found_exception`), when it named one."""
    error: str = ""
    """The failure in a few words: the error type, else the body, else why no answer came."""
    reason: str = ""
    """OpenSearch's reason for the error, else `error`."""


def unavailable(status: int) -> bool:
    """Whether a whole request answered `status` may succeed later without any change."""
    return status in (408, 429) or status >= 500 or status == 0


def answer_of(error: BaseException) -> Answer:
    """What OpenSearch answered to the request `error` (raised by `translated`) is about."""
    cause = error.__cause__
    if isinstance(cause, os_errors.ConnectionError):
        return Answer(0, error=redact(str(cause.error)), reason=redact(str(cause.error)))
    if isinstance(cause, os_errors.TransportError):
        status = cause.status_code if isinstance(cause.status_code, int) else 0
        info = cause.info if isinstance(cause.info, dict) else {}
        body = info.get("error")
        body = body if isinstance(body, dict) else {}
        text = redact(str(cause.error))
        reason = redact(str(body["reason"])) if body.get("reason") else text
        return Answer(status, str(body.get("type", "")), text, reason)
    if isinstance(cause, OSError):
        return Answer(0, error=redact(str(cause)), reason=redact(str(cause)))
    return Answer(0)


def error_reason(error: Any) -> str:
    """OpenSearch's `error` object (or text) as one reason, with its cause when different."""
    if not error:
        return ""
    if isinstance(error, dict):
        text = str(error.get("reason", ""))
        caused = error.get("caused_by")
        if isinstance(caused, dict) and caused.get("reason") and caused["reason"] != text:
            text = f"{text} (caused by: {caused['reason']})"
    else:
        text = str(error)
    return text[:_REASON_LIMIT]


@contextmanager
def translated(action: str, *, plain: bool = False) -> Iterator[None]:
    """Re-raise opensearch-py errors as SinkUnavailable / SinkConfigError / RequestTooLarge.

    Each message starts with `action` and says what OpenSearch answered. By default a
    401/403 says to check the credentials and a 413 is a RequestTooLarge (the pipeline
    splits the bulk). `plain` words every refusal `OpenSearch answered <status> <error>`
    and keeps a 413 a SinkConfigError, as the alias swap always has.
    """
    try:
        yield
    except os_errors.ConnectionError as exc:  # ConnectionTimeout and SSLError too
        raise SinkUnavailable(
            f"{action}: cannot reach OpenSearch ({redact(str(exc.error))})"
        ) from exc
    except os_errors.TransportError as exc:
        status = exc.status_code if isinstance(exc.status_code, int) else 0
        kind = SinkUnavailable if unavailable(status) else SinkConfigError
        if plain:
            raise kind(redact(f"{action}: OpenSearch answered {status} {exc.error}")) from exc
        summary = redact(_summary(exc))
        if status in (401, 403):
            raise SinkConfigError(
                f"{action}: OpenSearch refused the credentials ({status} {summary}); "
                "check OPENSEARCH_USER / OPENSEARCH_PASSWORD and the user's permissions"
            ) from exc
        if status == 413:
            raise RequestTooLarge(f"{action}: OpenSearch refused the request as too large") from exc
        if kind is SinkUnavailable:
            raise SinkUnavailable(f"{action}: OpenSearch answered {status} {summary}") from exc
        raise SinkConfigError(f"{action}: OpenSearch refused it ({status} {summary})") from exc
    except OSError as exc:
        raise SinkUnavailable(f"{action}: cannot reach OpenSearch ({redact(str(exc))})") from exc


async def none_if(status: int, request: Awaitable[T]) -> T | None:
    """`await request`, or None when OpenSearch answers it `status` (404: there is none).

    Any other failure propagates as it is, for the `translated` block around to word.
    """
    try:
        return await request
    except os_errors.TransportError as exc:
        if exc.status_code != status:
            raise
        return None


def _summary(exc: os_errors.TransportError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error", exc.error)
    if isinstance(error, dict):
        return f"{error.get('type', '')}: {error_reason(error)}"
    return str(error)
