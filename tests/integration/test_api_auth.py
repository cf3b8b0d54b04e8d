"""Who may use the REST API: staff sessions (with CSRF) and API tokens, and nobody else.

Also the tokens themselves: stored hashed, shown once (admin and `createapitoken`),
revocable, with their last use recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.models import ApiToken
from syncer.models import Subscription
from tests.support.factories import entry, subscription
from tests.support.users import bearer, operator

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

JSON = "application/json"
# Every endpoint that changes something, with a body it would accept.
MUTATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    (
        "post",
        "/api/subscriptions",
        {
            "name": "customers",
            "source": {"kind": "postgres", "dsn": "postgresql://u@h/db", "relation": "customers"},
            "index": {"name": "customers"},
        },
    ),
    ("patch", "/api/subscriptions/orders", {"enabled": False}),
    ("delete", "/api/subscriptions/orders", None),
    ("post", "/api/subscriptions/orders/pause", None),
    ("post", "/api/subscriptions/orders/resume", None),
    ("post", "/api/subscriptions/orders/resync", {"mode": "in_place"}),
    ("post", "/api/dlq/retry", {"subscription": "orders"}),
    ("post", "/api/dlq/purge", {"subscription": "orders"}),
]


@pytest.fixture
def staff() -> User:
    return operator(password="pw")


def call(client: Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    if body is None:
        return getattr(client, method)(path)
    return getattr(client, method)(path, body, content_type=JSON)


def test_health_needs_no_credentials_and_everything_else_does() -> None:
    anonymous = Client()
    assert anonymous.get("/api/health").json() == {"status": "ok"}
    for path in ("/api/ready", "/api/subscriptions", "/api/dlq", "/api/dlq/stats"):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert "Authorization: Bearer" in response.json()["detail"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
def test_a_mutation_without_credentials_is_401_and_changes_nothing(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    subscription("orders")
    response = call(Client(enforce_csrf_checks=True), method, path, body)
    assert response.status_code == 401
    assert Subscription.objects.get(name="orders").control_version == 0
    assert list(Subscription.objects.values_list("name", flat=True)) == ["orders"]


def test_a_valid_token_acts_as_its_user(staff: User) -> None:
    subscription("orders")
    _, text = ApiToken.issue(staff, "ci")
    response = bearer(text).get("/api/subscriptions")
    assert response.status_code == 200
    assert [s["name"] for s in response.json()] == ["orders"]


@pytest.mark.parametrize(
    "header",
    ["Bearer ssk_00000000_not-a-real-token", "Bearer ", "Bearer " + "x" * 5000],
)
def test_an_unknown_token_is_401(staff: User, header: str) -> None:
    ApiToken.issue(staff, "ci")
    response = Client(headers={"Authorization": header}).get("/api/subscriptions")
    assert response.status_code == 401
    assert response.json()["detail"].startswith("invalid API token")


def test_a_wrong_token_is_refused_even_with_a_staff_session(staff: User) -> None:
    client = Client(headers={"Authorization": "Bearer ssk_00000000_wrong"})
    client.force_login(staff)
    assert client.get("/api/subscriptions").status_code == 401


def test_a_revoked_token_is_refused(staff: User) -> None:
    token, text = ApiToken.issue(staff, "ci")
    assert bearer(text).get("/api/subscriptions").status_code == 200
    assert token.revoke() and not token.revoke()
    response = bearer(text).get("/api/subscriptions")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_tokens_of_inactive_or_non_staff_users_are_refused(staff: User) -> None:
    _, text = ApiToken.issue(staff, "ci")
    staff.is_active = False
    staff.save()
    assert bearer(text).get("/api/subscriptions").status_code == 401
    staff.is_active, staff.is_staff = True, False
    staff.save()
    response = bearer(text).get("/api/subscriptions")
    assert response.status_code == 403
    assert "not staff" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
def test_a_read_only_token_reads_but_gets_403_on_every_mutation(
    staff: User, method: str, path: str, body: dict[str, Any] | None
) -> None:
    sub = subscription("orders")
    entry(sub, "order-1")
    _, text = ApiToken.issue(staff, "dashboard", read_only=True)
    client = bearer(text)
    assert client.get("/api/subscriptions/orders").status_code == 200
    response = call(client, method, path, body)
    assert response.status_code == 403
    assert "read-only" in response.json()["detail"]
    sub.refresh_from_db()
    assert (sub.control_version, sub.enabled, sub.dead_letters.count()) == (0, True, 1)
    assert Subscription.objects.count() == 1


def test_a_staff_session_reads_and_needs_csrf_to_change(staff: User) -> None:
    subscription("orders")
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.get("/api/subscriptions/orders").status_code == 200

    refused = client.post("/api/subscriptions/orders/pause")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert not Subscription.objects.get(name="orders").paused

    client.get(reverse("admin:index"))  # sets the csrftoken cookie, as a browser gets it
    csrf = client.cookies["csrftoken"].value
    accepted = client.post("/api/subscriptions/orders/pause", headers={"X-CSRFToken": csrf})
    assert accepted.status_code == 200
    assert Subscription.objects.get(name="orders").paused
    (logged,) = LogEntry.objects.all()
    assert (logged.user, logged.change_message) == (staff, "Paused, via the API (staff session)")


def test_a_non_staff_session_is_403() -> None:
    subscription("orders")
    user = User.objects.create_user("viewer", password="pw")
    client = Client()
    client.force_login(user)
    response = client.get("/api/subscriptions")
    assert response.status_code == 403
    assert "staff" in response.json()["detail"]


def test_last_used_is_recorded_at_most_once_a_minute(staff: User) -> None:
    token, text = ApiToken.issue(staff, "ci")
    assert token.last_used_at is None
    bearer(text).get("/api/subscriptions")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None and timezone.now() - first < dt.timedelta(seconds=10)

    bearer(text).get("/api/subscriptions")
    token.refresh_from_db()
    assert token.last_used_at == first  # within the minute: no write

    long_ago = timezone.now() - dt.timedelta(minutes=2)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=long_ago)
    bearer(text).get("/api/subscriptions")
    token.refresh_from_db()
    assert token.last_used_at is not None and token.last_used_at > long_ago


def test_a_token_is_stored_only_as_its_hash(staff: User) -> None:
    token, text = ApiToken.issue(staff, "ci")
    assert text.startswith(f"ssk_{token.prefix}_") and len(text) > 40
    stored = ApiToken.objects.values().get(pk=token.pk)
    assert stored["key_hash"] == hashlib.sha256(text.encode()).hexdigest()
    secret = text.removeprefix(f"ssk_{token.prefix}_")
    assert len(secret) == 64
    assert not any(secret in str(value) for value in stored.values())
    assert secret not in str(token)


def test_createapitoken_prints_a_working_token_once(staff: User) -> None:
    out, err = StringIO(), StringIO()
    call_command("createapitoken", "--user", "ops", "--name", "deploy", stdout=out, stderr=err)
    text = out.getvalue().strip()
    token = ApiToken.objects.get(name="deploy")
    assert token.user == staff and not token.read_only
    assert token.key_hash == hashlib.sha256(text.encode()).hexdigest()
    assert "cannot be shown again" in err.getvalue()
    assert text not in err.getvalue()
    assert bearer(text).get("/api/subscriptions").status_code == 200


def test_createapitoken_read_only_token_cannot_mutate(staff: User) -> None:
    subscription("orders")
    out = StringIO()
    call_command(
        "createapitoken",
        "--user",
        "ops",
        "--name",
        "grafana",
        "--read-only",
        stdout=out,
        stderr=StringIO(),
    )
    client = bearer(out.getvalue().strip())
    assert client.get("/api/subscriptions").status_code == 200
    assert client.post("/api/subscriptions/orders/pause").status_code == 403


def test_createapitoken_refuses_unknown_non_staff_and_duplicate_names(staff: User) -> None:
    User.objects.create_user("viewer")
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("createapitoken", "--user", "nobody", "--name", "x")
    with pytest.raises(CommandError, match="not an active staff user"):
        call_command("createapitoken", "--user", "viewer", "--name", "x")
    call_command(
        "createapitoken", "--user", "ops", "--name", "ci", stdout=StringIO(), stderr=StringIO()
    )
    with pytest.raises(CommandError, match="already has a live token"):
        call_command("createapitoken", "--user", "ops", "--name", "ci")
    assert ApiToken.objects.count() == 1


def test_admin_shows_a_new_token_once_and_never_again(admin_client: Client, staff: User) -> None:
    response = admin_client.post(
        reverse("admin:console_apitoken_add"), {"user": staff.pk, "name": "deploy"}
    )
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    token = ApiToken.objects.get(name="deploy")
    page = response.content.decode()
    start = page.index(f"ssk_{token.prefix}_")
    text = page[start : page.index('"', start)]
    assert token.key_hash == hashlib.sha256(text.encode()).hexdigest()
    assert bearer(text).get("/api/subscriptions").status_code == 200

    secret = text.removeprefix(f"ssk_{token.prefix}_")
    change = admin_client.get(reverse("admin:console_apitoken_change", args=[token.pk]))
    listing = admin_client.get(reverse("admin:console_apitoken_changelist"))
    for later in (change, listing):
        assert later.status_code == 200
        assert secret not in later.content.decode()
        assert f"ssk_{token.prefix}_…" in later.content.decode()


def test_admin_revoke_action_refuses_the_token_from_then_on(
    admin_client: Client, staff: User
) -> None:
    token, text = ApiToken.issue(staff, "ci")
    bearer(text).get("/api/subscriptions")
    listing = admin_client.get(reverse("admin:console_apitoken_changelist"))
    assert "last used" in listing.content.decode().lower()
    response = admin_client.post(
        reverse("admin:console_apitoken_changelist"),
        {"action": "revoke_selected", "_selected_action": [token.pk]},
        follow=True,
    )
    assert "Revoked 1 token" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert bearer(text).get("/api/subscriptions").status_code == 401


def test_an_unexpected_error_is_a_json_500_without_a_stack_trace(
    staff: User, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from syncer.operations import dead_letters

    def broken(selection: Any = None) -> Any:
        raise RuntimeError("bug in the stats query")

    monkeypatch.setattr(dead_letters, "stats", broken)  # stands in for a bug of ours
    _, text = ApiToken.issue(staff, "ci")
    response = bearer(text).get("/api/dlq/stats")
    assert response.status_code == 500
    body = response.json()
    assert "error_id" in body["detail"]
    assert "Traceback" not in response.content.decode()
    assert "bug in the stats query" not in response.content.decode()
    error_id = body["detail"].rsplit(" ", 1)[1]
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert any(
        m.get("event") == "api_unexpected_error"
        and m.get("error_id") == error_id
        and "RuntimeError: bug in the stats query" in m.get("exception", "")
        for m in logged
    )


def _token_issuer(username: str) -> Client:
    """A logged-in staff user (not a superuser) who may add and view API tokens."""
    from django.contrib.auth.models import Permission

    user = operator(username)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_apitoken", "view_apitoken"])
    )
    client = Client()
    client.force_login(user)
    return client


def test_a_staff_user_issues_tokens_only_for_themselves_in_the_admin(staff: User) -> None:
    client = _token_issuer("alice")
    alice = User.objects.get(username="alice")
    add = reverse("admin:console_apitoken_add")

    form = client.get(add).context["adminform"].form
    assert list(form.fields["user"].queryset) == [alice]

    refused = client.post(add, {"user": staff.pk, "name": "for-ops"})
    assert refused.status_code == 200
    assert "user" in refused.context["adminform"].form.errors
    assert not ApiToken.objects.filter(user=staff).exists()

    assert client.post(add, {"user": alice.pk, "name": "mine"}).status_code == 200
    token = ApiToken.objects.get(name="mine")
    assert (token.user, token.issued_by) == (alice, alice)


def test_a_superuser_issues_tokens_for_others_and_is_recorded(
    admin_client: Client, admin_user: User, staff: User
) -> None:
    admin_client.post(reverse("admin:console_apitoken_add"), {"user": staff.pk, "name": "ci"})
    token = ApiToken.objects.get(name="ci")
    assert (token.user, token.issued_by) == (staff, admin_user)
    listing = admin_client.get(reverse("admin:console_apitoken_changelist")).content.decode()
    assert "issued by" in listing.lower()


def test_issuing_for_another_user_is_refused_unless_a_superuser(staff: User) -> None:
    from django.core.exceptions import PermissionDenied

    alice = operator("alice")
    with pytest.raises(PermissionDenied, match="only for themselves"):
        ApiToken.issue(staff, "ci", issued_by=alice)
    root = User.objects.create_superuser("root")
    token, _ = ApiToken.issue(staff, "ci", issued_by=root)
    assert token.issued_by == root
    assert ApiToken.objects.count() == 1


def test_createapitoken_records_the_issuer_it_is_given(staff: User) -> None:
    operator("alice")
    User.objects.create_superuser("root")
    quiet = {"stdout": StringIO(), "stderr": StringIO()}
    with pytest.raises(CommandError, match="only for themselves"):
        call_command("createapitoken", "--user", "ops", "--name", "a", "--issued-by", "alice")
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("createapitoken", "--user", "ops", "--name", "a", "--issued-by", "ghost")
    assert not ApiToken.objects.exists()

    call_command("createapitoken", "--user", "ops", "--name", "b", "--issued-by", "root", **quiet)
    call_command("createapitoken", "--user", "ops", "--name", "c", "--issued-by", "ops", **quiet)
    call_command("createapitoken", "--user", "ops", "--name", "d", **quiet)
    issuers = dict(ApiToken.objects.values_list("name", "issued_by__username"))
    assert issuers == {"b": "root", "c": "ops", "d": None}
