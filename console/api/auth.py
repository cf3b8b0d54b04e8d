"""Who may call the API: a staff session (browser, with CSRF) or a bearer API token.

Both are django-ninja auth classes, tried in order: a request that carries
`Authorization: Bearer …` is judged by its token alone; otherwise the session is.
Read-only tokens may only read: every mutating endpoint (POST, PATCH, DELETE) refuses
them with 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from ninja.errors import AuthenticationError, AuthorizationError
from ninja.security import APIKeyCookie, HttpBearer

from console.models import TOKEN_PREFIX, ApiToken, hash_token

log = structlog.get_logger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# last_used_at is for people ("is this token still used?"); one write a minute is plenty.
TOUCH_EVERY = timedelta(minutes=1)
_MAX_TOKEN_LENGTH = 200


@dataclass(frozen=True)
class Caller:
    """The user an API request acts as, and the token it came with (None: a session)."""

    user: AbstractBaseUser
    token: ApiToken | None = None

    def describe(self) -> str:
        """How the admin history names the way in: `API token 'deploy' (ssk_1a2b3c4d_…)`."""
        if self.token is None:
            return "the API (staff session)"
        return f"API token {self.token.name!r} ({TOKEN_PREFIX}_{self.token.prefix}_…)"


class BearerToken(HttpBearer):
    """`Authorization: Bearer ssk_…`: an API token, looked up by its hash."""

    def authenticate(self, request: HttpRequest, token: str) -> Caller:
        found = None
        if token and len(token) <= _MAX_TOKEN_LENGTH:
            found = (
                ApiToken.objects.select_related("user").filter(key_hash=hash_token(token)).first()
            )
        if found is None:
            raise AuthenticationError(401, "invalid API token: check the Authorization header")
        if found.revoked_at is not None:
            log.warning("api_token_refused", token=found.prefix, reason="revoked")
            raise AuthenticationError(401, "this API token has been revoked; ask for a new one")
        user = found.user
        if not user.is_active:
            log.warning("api_token_refused", token=found.prefix, reason="user inactive")
            raise AuthenticationError(401, "this API token's user is inactive")
        if not user.is_staff:
            raise AuthorizationError(
                403, "this API token's user is not staff; the API is staff-only"
            )
        _touch(found)
        if found.read_only and request.method not in SAFE_METHODS:
            raise AuthorizationError(
                403, "this API token is read-only; use a token that may make changes"
            )
        return Caller(user, found)


class StaffSession(APIKeyCookie):
    """A logged-in staff user's session; unsafe methods need the CSRF token too."""

    param_name = settings.SESSION_COOKIE_NAME

    def __call__(self, request: HttpRequest) -> Caller | None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            # No session: nothing to protect from CSRF; the answer is 401, not 403.
            return None
        result: Caller | None = super().__call__(request)  # checks CSRF, then authenticate
        return result

    def authenticate(self, request: HttpRequest, key: str | None) -> Caller:
        user = request.user
        if isinstance(user, AnonymousUser) or not user.is_active or not user.is_staff:
            raise AuthorizationError(403, "the API is for staff users; this session's user is not")
        return Caller(user)


def caller(request: HttpRequest) -> Caller:
    """The authenticated caller of `request` (set by the auth classes above)."""
    found = getattr(request, "auth", None)
    if not isinstance(found, Caller):
        raise AuthenticationError()
    return found


def _touch(token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < TOUCH_EVERY:
        return
    # Guarded, so concurrent requests of the same token write at most once a minute too.
    ApiToken.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - TOUCH_EVERY), pk=token.pk
    ).update(last_used_at=now)
    token.last_used_at = now


def authenticators() -> list[BearerToken | StaffSession]:
    return [BearerToken(), StaffSession()]
