"""Users and API clients of each role, for tests of what a caller may do.

- `operator`: a staff user holding every permission on subscriptions, dead letters and
  live subscriptions (what the API and the admin need for each of their actions), not a
  superuser;
- `viewer`: a staff user holding only the view permissions;
- `bearer` / `token_client`: a test client sending an API token of a user.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission, User
from django.test import Client

from console.models import ApiToken

MODELS = ("subscription", "deadletter", "livesubscription")
ACTIONS = ("view", "add", "change", "delete")


def permissions(*actions: str) -> list[Permission]:
    """The syncer permissions of `actions` on subscriptions, dead letters and live ones."""
    codenames = [f"{action}_{model}" for action in actions for model in MODELS]
    return list(Permission.objects.filter(content_type__app_label="syncer", codename__in=codenames))


def staff_with(username: str, actions: tuple[str, ...], **fields: Any) -> User:
    fields.setdefault("is_staff", True)
    user = User.objects.create_user(username, **fields)
    user.user_permissions.add(*permissions(*actions))
    return user


def operator(username: str = "ops", **fields: Any) -> User:
    """A staff user who may do everything to subscriptions and dead letters."""
    return staff_with(username, ACTIONS, **fields)


def viewer(username: str = "viewer", **fields: Any) -> User:
    """A staff user who may only look at subscriptions and dead letters."""
    return staff_with(username, ("view",), **fields)


def bearer(text: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {text}"})


def token_client(user: User, name: str = "ci", read_only: bool = False) -> Client:
    """A client sending a fresh API token of `user`."""
    _, text = ApiToken.issue(user, name, read_only=read_only)
    return bearer(text)
