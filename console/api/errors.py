"""The API's errors: every failure is JSON with a `detail`, never a stack trace.

- 401 no or invalid credentials, 403 not allowed (read-only token, non-staff user, CSRF),
- 404 no such subscription or dead letter, 409 a name or an index already taken (with
  `errors` as for 422), or a delete that needs `force`,
- 422 field errors: `errors` lists `{"field": "source.relation", "message": ...}`, with
  the field named as in a subscriptions file (or the query parameter's name); a filter's
  errors add `"position"`, the character offset in its text (null when not known),
- 429 over a live-subscription quota: `limit`, `scope` (owner | global), `active`, `requested`,
- 503 OpenSearch refused a retry as a whole, 500 anything unexpected (logged with an id
  the response gives, so an operator can find it).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Router
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.responses import NinjaJSONEncoder

from syncer.errors import (
    IndexNameTaken,
    NotPermitted,
    QuotaExceeded,
    RetryAborted,
    UnknownLiveSubscription,
    UnknownSubscription,
)
from syncer.operations import declarations
from syncer.text import redact

log = structlog.get_logger(__name__)

_MAX_DETAIL = 500
_NO_CREDENTIALS = (
    "authentication required: send Authorization: Bearer <API token>, or log in to the "
    "admin as a staff user"
)


class Conflict(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class NotFound(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class FieldErrors(Exception):
    """Request values that cannot be used; each error is (field path, message), and for
    text with a syntax (a filter) its `positions`: character offsets, None when unknown."""

    def __init__(
        self, errors: Sequence[tuple[str, str]], positions: Sequence[int | None] | None = None
    ) -> None:
        self.errors = list(errors)
        self.positions = None if positions is None else list(positions)
        super().__init__("; ".join(f"{field}: {message}" for field, message in self.errors))


# Mounted last: any other path under /api/ is a JSON 404 rather than Django's HTML page.
unknown_endpoints = Router()


@unknown_endpoints.api_operation(
    ["GET", "POST", "PUT", "PATCH", "DELETE"], "/{path:rest}", auth=None, include_in_schema=False
)
def unknown_endpoint(request: HttpRequest, rest: str) -> HttpResponse:
    return respond(404, {"detail": f"no such endpoint: {request.path}; see /api/docs"})


def install(api: NinjaAPI) -> None:
    """Register the JSON error handlers on `api`."""
    api.exception_handler(HttpError)(_http_error)
    api.exception_handler(Http404)(_not_found)
    api.exception_handler(ValidationError)(_invalid_request)
    api.exception_handler(FieldErrors)(_field_errors)
    api.exception_handler(IndexNameTaken)(_index_taken)
    api.exception_handler(UnknownSubscription)(_unknown_subscription)
    api.exception_handler(RetryAborted)(_retry_aborted)
    api.exception_handler(UnknownLiveSubscription)(_unknown_live_subscription)
    api.exception_handler(NotPermitted)(_not_permitted)
    api.exception_handler(QuotaExceeded)(_quota_exceeded)
    api.exception_handler(Exception)(_unexpected)


def respond(status: int, body: dict[str, Any]) -> HttpResponse:
    return JsonResponse(body, status=status, encoder=NinjaJSONEncoder)


def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if not isinstance(exc, AuthenticationError):
        return respond(exc.status_code, {"detail": str(exc)})
    detail = str(exc)
    if detail == AuthenticationError().message:  # ninja's bare default: no credentials at all
        detail = _NO_CREDENTIALS
    response = respond(exc.status_code, {"detail": detail})
    response["WWW-Authenticate"] = 'Bearer realm="searchsync"'
    return response


def _not_found(request: HttpRequest, exc: Exception) -> HttpResponse:
    return respond(404, {"detail": "not found"})


def _unknown_subscription(request: HttpRequest, exc: UnknownSubscription) -> HttpResponse:
    return respond(404, {"detail": _short(str(exc))})


def _unknown_live_subscription(request: HttpRequest, exc: UnknownLiveSubscription) -> HttpResponse:
    return respond(404, {"detail": str(exc)})


def _not_permitted(request: HttpRequest, exc: NotPermitted) -> HttpResponse:
    return respond(403, {"detail": _short(str(exc))})


def _quota_exceeded(request: HttpRequest, exc: QuotaExceeded) -> HttpResponse:
    body = {
        "detail": str(exc),
        "limit": exc.limit,
        "scope": exc.scope,
        "active": exc.active,
        "requested": exc.requested,
    }
    return respond(429, body)


def _field_errors(request: HttpRequest, exc: FieldErrors) -> HttpResponse:
    return _unprocessable(exc.errors, exc.positions)


def _index_taken(request: HttpRequest, exc: IndexNameTaken) -> HttpResponse:
    field = declarations.FIELD_LABELS["index_name"]
    listed = [{"field": field, "message": message} for _, message in exc.errors]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in listed)
    return respond(409, {"detail": _short(detail), "errors": listed})


def _invalid_request(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    """ninja's own validation errors, with the field named like the rest of the API's."""
    errors = []
    for error in exc.errors:
        loc = list(error.get("loc", ()))
        if loc[:1] == ["body"]:
            loc = loc[2:]  # ("body", <parameter name>, ...): the body is the parameter
        else:
            loc = loc[1:]  # ("query" | "path", name, ...)
        # A body that takes one of several forms names the form first (pydantic's tag, as
        # `<batch>`); the field is the same in every form, so the tag is left out.
        loc = [part for part in loc if not _is_form_tag(part)]
        errors.append((field_path(loc) or "(body)", str(error.get("msg", "invalid"))))
    return _unprocessable(errors)


def _is_form_tag(part: Any) -> bool:
    return isinstance(part, str) and part.startswith("<") and part.endswith(">")


def _unprocessable(
    errors: Sequence[tuple[str, str]], positions: Sequence[int | None] | None = None
) -> HttpResponse:
    """422 listing `errors` (field, message), each with its `positions` entry if given."""
    listed: list[dict[str, Any]] = [
        {"field": field, "message": redact(message)} for field, message in errors
    ]
    if positions is not None:
        for error, position in zip(listed, positions, strict=True):
            error["position"] = position
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in listed)
    return respond(422, {"detail": _short(detail), "errors": listed})


def _retry_aborted(request: HttpRequest, exc: RetryAborted) -> HttpResponse:
    from console.api.schemas import retry_outcome

    cause = exc.__cause__ or exc
    detail = (
        f"retry stopped: {cause}. The other entries are kept; retry them when OpenSearch is back."
    )
    return respond(503, {"detail": _short(redact(detail)), "done": retry_outcome(exc.report)})


def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "api_unexpected_error",
        error_id=error_id,
        method=request.method,
        path=request.path,
        exc_info=exc,
    )
    return respond(
        500,
        {"detail": f"internal error; the console's log has the details under error_id {error_id}"},
    )


def field_path(loc: Sequence[Any]) -> str:
    """("source", "relation") -> source.relation; list positions as [i]."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
