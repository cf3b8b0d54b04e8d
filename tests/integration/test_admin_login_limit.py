"""The admin login is refused after repeated failures (django-axes), until the cool-off
ends or an operator resets it."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from console.login_limit import client_ip

pytestmark = pytest.mark.django_db

LOGIN = reverse("admin:login")


@pytest.fixture(autouse=True)
def limits(settings: Any, fast_password_hashing: None) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = dt.timedelta(minutes=15)


@pytest.fixture
def ops() -> User:
    return User.objects.create_user("ops", password="right-password", is_staff=True)


def log_in(password: str, username: str = "ops", address: str = "10.0.0.1") -> tuple[int, bool]:
    """The login form's answer and whether it logged in."""
    client = Client(REMOTE_ADDR=address)
    response = client.post(f"{LOGIN}?next=/admin/", {"username": username, "password": password})
    return response.status_code, "_auth_user_id" in client.session


def lock_out(username: str = "ops", address: str = "10.0.0.1") -> None:
    """Fail AXES_FAILURE_LIMIT times: the form again each time, the last one locks out."""
    answers = [log_in("wrong", username, address)[0] for _ in range(3)]
    assert answers == [200, 200, 429]


def test_the_right_password_is_refused_after_repeated_failures(ops: User) -> None:
    lock_out()
    assert log_in("right-password") == (429, False)
    # Locked for that username from anywhere, and for that address whatever the username.
    assert log_in("right-password", address="10.9.9.9") == (429, False)
    User.objects.create_user("other", password="right-password", is_staff=True)
    assert log_in("right-password", username="other") == (429, False)


def test_a_login_works_again_after_the_cool_off(ops: User) -> None:
    lock_out()
    assert log_in("right-password") == (429, False)
    # The failures are now older than the cool-off.
    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=16))
    assert log_in("right-password") == (302, True)


def test_a_login_works_again_after_an_operators_reset(ops: User) -> None:
    lock_out()
    assert log_in("right-password") == (429, False)
    call_command("axes_reset", stdout=StringIO())
    assert log_in("right-password") == (302, True)


def test_fewer_failures_than_the_limit_do_not_lock_and_success_resets_them(ops: User) -> None:
    for _ in range(2):
        log_in("wrong")
    assert log_in("right-password") == (302, True)
    for _ in range(2):
        log_in("wrong")
    assert log_in("right-password") == (302, True)  # the count started again at the success


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "203.0.113.7", "10.0.0.1"),  # no proxy: the header is the client's own words
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # a forged entry on the left
        (2, "203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (2, "", "10.0.0.1"),  # fewer hops than proxies: the peer
    ],
)
def test_the_counted_address_trusts_only_the_configured_proxies(
    settings: Any, proxies: int, forwarded: str, expected: str
) -> None:
    settings.LOGIN_PROXY_COUNT = proxies
    request = RequestFactory().post(LOGIN, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected
