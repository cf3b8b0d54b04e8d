"""Who may call the API: a staff session (browser, with CSRF) or a bearer API token.

Both are django-ninja auth classes, tried in order: a request that carries
`Authorization: Bearer …` is judged by its token alone; otherwise the session is.

Then what the caller may do: each endpoint states the Django model permissions it needs
(`console.api.permissions.requires`), and the caller's user must hold them all, as in
the admin (`user.has_perm`: groups, user permissions, superuser). A token acts as its
user and never more; a read-only token holds at most the `view_` permissions. A refusal
is 403 naming the missing permission.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
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

    user: User
    token: ApiToken | None = None

    def describe(self) -> str:
        """How the admin history names the way in: `API token 'deploy' (ssk_1a2b3c4d_…)`."""
        if self.token is None:
            return "the API (staff session)"
        return f"API token {self.token.name!r} ({TOKEN_PREFIX}_{self.token.prefix}_…)"


class BearerToken(HttpBearer):
    """`Authorization: Bearer ssk_…`: an API token, looked up by its hash."""

    def __init__(self, permissions: Sequence[str] = ()) -> None:
        super().__init__()
        self.permissions = tuple(permissions)

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
        if found.read_only and not self.permissions and request.method not in SAFE_METHODS:
            # An endpoint that declares no permission still changes nothing for this token.
            raise AuthorizationError(
                403, "this API token is read-only; use a token that may make changes"
            )
        return check_permissions(Caller(user, found), self.permissions)


class StaffSession(APIKeyCookie):
    """A logged-in staff user's session; unsafe methods need the CSRF token too."""

    param_name = settings.SESSION_COOKIE_NAME

    def __init__(self, permissions: Sequence[str] = ()) -> None:
        super().__init__()
        self.permissions = tuple(permissions)

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
        return check_permissions(Caller(user), self.permissions)


def is_view_permission(permission: str) -> bool:
    """`syncer.view_subscription` is; `syncer.change_subscription` is not."""
    return permission.partition(".")[2].startswith("view_")


def _beyond_read_only(caller: Caller, permission: str) -> bool:
    read_only = caller.token is not None and caller.token.read_only
    return read_only and not is_view_permission(permission)


def missing_permission(caller: Caller, permissions: Sequence[str]) -> str | None:
    """The first of `permissions` the caller may not use, or None when it may use them all."""
    for permission in permissions:
        if _beyond_read_only(caller, permission) or not caller.user.has_perm(permission):
            return permission
    return None


def check_permissions(caller: Caller, permissions: Sequence[str]) -> Caller:
    """`caller` if it holds every one of `permissions`; else 403 naming the one it lacks."""
    missing = missing_permission(caller, permissions)
    if missing is None:
        return caller
    if _beyond_read_only(caller, missing):
        raise AuthorizationError(
            403,
            f"this API token is read-only: it may only view, and this call needs the "
            f"permission {missing}; use a token that may make changes",
        )
    raise AuthorizationError(
        403,
        f"permission denied: this call needs the permission {missing}, which user "
        f"{caller.user.get_username()!r} does not have; an administrator can grant it "
        f"in the admin (Users or Groups)",
    )


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


def authenticators(permissions: Sequence[str] = ()) -> list[BearerToken | StaffSession]:
    """The API's ways in, each refusing a caller that lacks one of `permissions`."""
    return [BearerToken(permissions), StaffSession(permissions)]
