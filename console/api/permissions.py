"""What each API endpoint lets its caller do, stated on the endpoint, checked in auth.py.

    @router.post("/{name}/pause", ...)
    @requires(CHANGE_SUBSCRIPTION)
    def pause(request, name): ...

`requires` gives the operation the API's authenticators with those permissions, so the
check runs with authentication, before the body is read: a caller that may not call
an endpoint learns nothing from it but the 403. The permissions are the admin's own
(console.model_permissions), so a user may do the same through the API as through the
admin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ninja.operation import Operation
from ninja.utils import contribute_operation_callback

from console.api.auth import authenticators
from console.model_permissions import (
    ADD_LIVE_SUBSCRIPTION,
    ADD_SUBSCRIPTION,
    CHANGE_DEAD_LETTER,
    CHANGE_LIVE_SUBSCRIPTION,
    CHANGE_SUBSCRIPTION,
    DELETE_DEAD_LETTER,
    DELETE_LIVE_SUBSCRIPTION,
    DELETE_SUBSCRIPTION,
    VIEW_DEAD_LETTER,
    VIEW_LIVE_SUBSCRIPTION,
    VIEW_SUBSCRIPTION,
)

__all__ = [
    "ADD_LIVE_SUBSCRIPTION",
    "ADD_SUBSCRIPTION",
    "CHANGE_DEAD_LETTER",
    "CHANGE_LIVE_SUBSCRIPTION",
    "CHANGE_SUBSCRIPTION",
    "DELETE_DEAD_LETTER",
    "DELETE_LIVE_SUBSCRIPTION",
    "DELETE_SUBSCRIPTION",
    "VIEW_DEAD_LETTER",
    "VIEW_LIVE_SUBSCRIPTION",
    "VIEW_SUBSCRIPTION",
    "required_permissions",
    "requires",
]

View = TypeVar("View", bound=Callable[..., Any])


def requires(*permissions: str) -> Callable[[View], View]:
    """Let only callers holding every one of `permissions` call the endpoint (put it under
    the route decorator)."""

    def contribute(operation: Operation) -> None:
        auth = authenticators(permissions)
        # Set as if given to the route: an operation's own auth is not replaced by the API's.
        operation.auth_param = auth
        operation._set_auth(auth)
        needs = ", ".join(f"`{permission}`" for permission in permissions)
        operation.description = f"{operation.description or ''}\n\nNeeds the permission {needs}."

    def decorate(view: View) -> View:
        contribute_operation_callback(view, contribute)
        return view

    return decorate


def required_permissions(operation: Operation) -> tuple[str, ...] | None:
    """The permissions `operation` checks, or None when it states none."""
    if not isinstance(operation.auth_param, list) or not operation.auth_param:
        return None
    found: tuple[str, ...] | None = getattr(operation.auth_param[0], "permissions", None)
    return found or None
