"""One web request retries or purges at most SYNCER_API_DLQ_MAX dead letters.

A larger selection is refused whole, with what to do instead, through the API (422 on
`limit`) and in the admin (an error instead of the confirm button); `limit` takes a
bounded slice and `remaining` says what is left. Retries go to a real osmem-server.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import messages
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from opensearchpy import OpenSearch

from syncer import conf
from syncer.checks import check_worker_settings
from syncer.models import DeadLetter
from tests.support.factories import entry, subscription
from tests.support.users import token_client

pytestmark = pytest.mark.django_db

JSON = "application/json"
MOST = 3
CHANGELIST = reverse("admin:syncer_deadletter_changelist")
PURGE_URL = reverse("admin:syncer_deadletter_purge")
RETRY_URL = reverse("admin:syncer_deadletter_retry")
UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def bound(settings: Any, fast_password_hashing: None) -> None:
    settings.SYNCER_API_DLQ_MAX = MOST


@pytest.fixture
def api() -> Client:
    return token_client(User.objects.create_superuser("ops", "ops@example.com", "pw"))


@pytest.fixture
def four() -> list[DeadLetter]:
    orders = subscription("orders")
    return [entry(orders, f"d{i}") for i in range(MOST + 1)]


def test_the_default_bound_is_1000(settings: Any) -> None:
    del settings.SYNCER_API_DLQ_MAX
    assert conf.api_dlq_max() == 1000


@pytest.mark.parametrize("operation", ["retry", "purge"])
def test_the_api_refuses_more_than_the_bound_and_says_what_to_do(
    api: Client, four: list[DeadLetter], settings: Any, operation: str
) -> None:
    settings.OPENSEARCH_URL = UNREACHABLE  # a retry that ran anyway would be a 503

    response = api.post(f"/api/dlq/{operation}", {"subscription": "orders"}, content_type=JSON)

    assert response.status_code == 422, response.content
    [error] = response.json()["errors"]
    assert error["field"] == "limit"
    assert error["message"] == (
        f"4 dead letters selected (subscription orders): one request may {operation} at "
        "most 3 (SYNCER_API_DLQ_MAX), so nothing was done. Narrow the selection (a "
        "subscription, an age, fewer ids, or a limit of at most 3 per call), or run "
        f"`manage.py dlq {operation} --subscription orders`, which has no such bound."
    )
    assert DeadLetter.objects.filter(attempts=1).count() == MOST + 1


def test_purge_of_everything_points_at_purge_all(api: Client, four: list[DeadLetter]) -> None:
    response = api.post("/api/dlq/purge", {"all": True}, content_type=JSON)
    assert response.status_code == 422
    assert "`manage.py dlq purge --all`" in response.json()["errors"][0]["message"]


def test_a_dry_run_counts_past_the_bound(api: Client, four: list[DeadLetter]) -> None:
    body = api.post(
        "/api/dlq/purge", {"subscription": "orders", "dry_run": True}, content_type=JSON
    ).json()
    assert (body["selected"], body["remaining"], body["purged"]) == (4, 0, 0)


def test_purge_with_a_limit_takes_a_slice_and_says_what_remains(
    api: Client, four: list[DeadLetter]
) -> None:
    first = api.post(
        "/api/dlq/purge", {"subscription": "orders", "limit": MOST}, content_type=JSON
    ).json()
    assert (first["purged"], first["remaining"]) == (3, 1)
    last = api.post(
        "/api/dlq/purge", {"subscription": "orders", "limit": MOST}, content_type=JSON
    ).json()
    assert (last["purged"], last["remaining"]) == (1, 0)
    assert not DeadLetter.objects.exists()


def test_retry_with_a_limit_takes_a_slice(
    api: Client, four: list[DeadLetter], search: OpenSearch
) -> None:
    body = api.post(
        "/api/dlq/retry", {"subscription": "orders", "limit": MOST}, content_type=JSON
    ).json()
    assert (body["succeeded"], body["remaining"]) == (3, 1)
    assert DeadLetter.objects.count() == 1


def test_a_limit_above_the_bound_is_refused(api: Client, four: list[DeadLetter]) -> None:
    response = api.post(
        "/api/dlq/purge", {"subscription": "orders", "limit": 10}, content_type=JSON
    )
    assert response.status_code == 422
    assert DeadLetter.objects.count() == MOST + 1


# -- the admin -------------------------------------------------------------------------


def selected_post(action: str, entries: list[DeadLetter], **extra: str) -> dict[str, Any]:
    return {
        "action": action,
        "_selected_action": [str(e.pk) for e in entries],
        "index": "0",
        "select_across": "0",
        **extra,
    }


def admin_messages(response: Any) -> list[tuple[int, str]]:
    return [(m.level, m.message) for m in response.context["messages"]]


ADMIN_REFUSAL = (
    "4 dead letters selected (a filtered list): one request may {op} at most 3 "
    "(SYNCER_API_DLQ_MAX), so nothing was done. Narrow the selection (filter the list by "
    "subscription, age or error), or run `manage.py dlq {op}` with --subscription and "
    "--older-than to match these entries, which has no such bound."
)


@pytest.mark.parametrize("operation", ["retry", "purge"])
def test_the_admin_action_offers_no_confirmation_past_the_bound(
    admin_client: Client, four: list[DeadLetter], settings: Any, operation: str
) -> None:
    settings.OPENSEARCH_URL = UNREACHABLE
    action = f"{operation}_selected"

    page = admin_client.post(CHANGELIST, selected_post(action, four))
    assert page.context["too_many"] == ADMIN_REFUSAL.format(op=operation)
    assert b"dlq-too-many" in page.content and b"Yes, " not in page.content

    # The confirming post itself (a stale page, a crafted form) is refused too.
    done = admin_client.post(CHANGELIST, selected_post(action, four, confirm="yes"), follow=True)
    [(level, text)] = admin_messages(done)
    assert level == messages.ERROR and text.startswith("4 dead letters selected")
    assert DeadLetter.objects.filter(attempts=1).count() == MOST + 1


@pytest.mark.parametrize("url", [RETRY_URL, PURGE_URL], ids=["retry", "purge"])
def test_the_admin_bulk_page_refuses_past_the_bound(
    admin_client: Client, four: list[DeadLetter], settings: Any, url: str
) -> None:
    settings.OPENSEARCH_URL = UNREACHABLE

    preview = admin_client.get(url, {"subscription": "orders"})
    assert "--subscription orders" in preview.context["too_many"]
    assert b"dlq-confirm" not in preview.content

    done = admin_client.post(url, {"subscription": "orders"}, follow=True)
    [(level, text)] = admin_messages(done)
    assert level == messages.ERROR and "at most 3 (SYNCER_API_DLQ_MAX)" in text
    assert DeadLetter.objects.filter(attempts=1).count() == MOST + 1


def test_the_admin_still_acts_within_the_bound(admin_client: Client) -> None:
    orders = subscription("orders")
    entries = [entry(orders, f"d{i}") for i in range(MOST)]
    done = admin_client.post(
        CHANGELIST, selected_post("purge_selected", entries, confirm="yes"), follow=True
    )
    assert admin_messages(done) == [(messages.SUCCESS, "Purged 3 dead letters")]


def test_a_bound_below_one_fails_the_system_check(settings: Any) -> None:
    settings.SYNCER_API_DLQ_MAX = 0
    assert "syncer.E007" in [message.id for message in check_worker_settings(None)]
