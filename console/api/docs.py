"""`/api/docs` and `/api/openapi.json` are for the API's callers only.

The schema maps every endpoint and its parameters: no map for anonymous visitors. A
request is let in with a valid API token (any token: the schema is the same for all) or
a staff session. Otherwise the Swagger page sends a browser to the admin's login and
back; the JSON schema answers 401 (or 403 for a logged-in user who is not staff), in
the API's JSON error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja.errors import AuthenticationError, AuthorizationError, HttpError

from console.api.auth import BearerToken, StaffSession
from console.api.errors import respond

View = Callable[..., HttpResponse]


def docs_login_required(view: View) -> View:
    """Serve `view` (the schema or the Swagger page) to a token or a staff session only."""

    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            allowed = _caller_of(request)
        except HttpError as exc:
            return _refused(request, exc)
        if not allowed:
            return _refused(request, AuthenticationError())
        return view(request, *args, **kwargs)

    return guarded


def _caller_of(request: HttpRequest) -> bool:
    """Whether the request carries a valid token or a staff session (raises on a bad one)."""
    if request.headers.get("Authorization"):
        return BearerToken()(request) is not None
    return StaffSession()(request) is not None


def _refused(request: HttpRequest, exc: HttpError) -> HttpResponse:
    match = request.resolver_match
    if match is not None and match.url_name == "openapi-view":
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    detail = str(exc)
    if isinstance(exc, AuthenticationError) and detail == AuthenticationError().message:
        detail = "log in to the admin as a staff user, or send Authorization: Bearer <API token>"
    response = respond(exc.status_code, {"detail": detail})
    if not isinstance(exc, AuthorizationError):
        response["WWW-Authenticate"] = 'Bearer realm="searchsync"'
    return response
