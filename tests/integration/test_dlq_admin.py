"""The dead-letter admin: read-only entries, retry and purge through confirmation pages.

Retries go to a real osmem-server (the `search` fixture), so their outcomes are
OpenSearch's own: accepted, a version conflict, a mapping rejection.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.contrib import messages
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from opensearchpy import OpenSearch

from syncer.admin import dead_letters
from syncer.models import DeadLetter
from tests.support.factories import TOTAL_IS_INTEGER, entry, retry_case, subscription

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

CHANGELIST = reverse("admin:syncer_deadletter_changelist")
RETRY_URL = reverse("admin:syncer_deadletter_retry")
PURGE_URL = reverse("admin:syncer_deadletter_purge")
UNREACHABLE = "http://127.0.0.1:9"


def shown_messages(response: Any) -> list[tuple[int, str]]:
    return [(m.level, m.message) for m in response.context["messages"]]


def listed(response: Any) -> list[str]:
    return sorted(e.doc_id for e in response.context["cl"].result_list)


def action_post(action: str, *entries: DeadLetter, **extra: str) -> dict[str, Any]:
    """What the changelist posts when `action` is chosen with `entries` ticked."""
    return {
        "action": action,
        "_selected_action": [str(e.pk) for e in entries],
        "index": "0",
        "select_across": "0",
        **extra,
    }


def confirm_post(action: str, *entries: DeadLetter, **extra: str) -> dict[str, Any]:
    """What the confirmation page posts back."""
    return {
        "action": action,
        "_selected_action": [str(e.pk) for e in entries],
        "select_across": "0",
        "confirm": "yes",
        **extra,
    }


def test_changelist_shows_one_line_per_entry_and_offers_no_add(admin_client: Client) -> None:
    orders = subscription()
    subscription("customers")  # a filter by subscription shows from two on
    entry(
        orders,
        "order-1",
        age=dt.timedelta(hours=3, minutes=10),
        error_reason="failed to parse field [total]\n" + "x" * 200,
        attempts=4,
    )

    response = admin_client.get(CHANGELIST)

    content = response.content.decode()
    assert response.status_code == 200
    row = response.context["cl"].result_list[0]
    assert row.doc_id == "order-1"
    assert "3 h" in content
    assert "mapper_parsing_exception" in content
    assert "failed to parse field [total] " + "x" * 49 + "…" in content  # 80 chars, one line
    assert '<td class="field-attempts">4</td>' in content
    assert "/admin/syncer/deadletter/add/" not in content
    assert admin_client.get(reverse("admin:syncer_deadletter_add")).status_code == 403
    changelist = response.context["cl"]
    assert [spec.title for spec in changelist.filter_specs] == [
        "subscription",
        "action",
        "error type",
        "age",
    ]
    choices = [c["display"] for c in changelist.filter_specs[3].choices(changelist)]
    assert choices == [
        "All",
        "last hour",
        "last day",
        "older than 1 day",
        "older than 7 days",
        "older than 30 days",
    ]


def test_changelist_filters_by_subscription_action_error_type_and_age(
    admin_client: Client,
) -> None:
    orders, customers = subscription(), subscription("customers")
    entry(orders, "fresh", age=dt.timedelta(minutes=10))
    entry(orders, "hours", age=dt.timedelta(hours=5), action="delete")
    entry(orders, "week", age=dt.timedelta(days=8), error_type="strict_dynamic_mapping_exception")
    entry(customers, "month", age=dt.timedelta(days=40))

    def docs(**query: Any) -> list[str]:
        return listed(admin_client.get(CHANGELIST, query))

    assert docs(subscription__id__exact=customers.pk) == ["month"]
    assert docs(action__exact="delete") == ["hours"]
    assert docs(error_type="strict_dynamic_mapping_exception") == ["week"]
    assert docs(age="1h") == ["fresh"]
    assert docs(age="1d") == ["fresh", "hours"]
    assert docs(age="gt1d") == ["month", "week"]
    assert docs(age="gt7d") == ["month", "week"]
    assert docs(age="gt30d") == ["month"]
    assert docs(age="gt7d", subscription__id__exact=orders.pk) == ["week"]


def test_changelist_searches_document_ids_and_error_text(admin_client: Client) -> None:
    orders = subscription()
    entry(orders, "order-17", error_reason="failed to parse field [total]")
    entry(
        orders,
        "order-18",
        error_type="strict_dynamic_mapping_exception",
        error_reason="mapping set to strict, dynamic introduction of [coupon] is not allowed",
    )

    assert listed(admin_client.get(CHANGELIST, {"q": "order-17"})) == ["order-17"]
    assert listed(admin_client.get(CHANGELIST, {"q": "[coupon]"})) == ["order-18"]
    assert listed(admin_client.get(CHANGELIST, {"q": "strict_dynamic"})) == ["order-18"]
    assert listed(admin_client.get(CHANGELIST, {"q": "order-"})) == ["order-17", "order-18"]


def test_detail_page_shows_payload_and_error_as_escaped_pretty_json(
    admin_client: Client,
) -> None:
    payload = {
        "title": "<script>alert('x')</script>",
        "lines": [{"sku": "A&B", "qty": 2}],
        "total": "not a number",
    }
    dead = entry(
        subscription(),
        "<img src=x onerror=alert(1)>",
        payload=payload,
        error_reason="Preview of field's value: '<script>alert(1)</script>'",
    )

    response = admin_client.get(reverse("admin:syncer_deadletter_change", args=[dead.pk]))

    content = response.content.decode()
    assert response.status_code == 200
    assert "<script>alert" not in content
    assert "<img src=x" not in content
    assert escape(json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)) in content
    assert "&quot;title&quot;: &quot;&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;" in (
        content
    )
    error = {
        "reason": "Preview of field's value: '<script>alert(1)</script>'",
        "status": 400,
        "type": "mapper_parsing_exception",
    }
    assert escape(json.dumps(error, indent=2, sort_keys=True)) in content
    assert '<pre class="dlq-json"' in content
    # read-only: no form fields, no save or delete buttons; a POST is refused
    assert 'name="doc_id"' not in content
    assert 'name="_save"' not in content
    assert "/delete/" not in content
    assert 'value="retry_selected"' in content and 'value="purge_selected"' in content
    refused = admin_client.post(
        reverse("admin:syncer_deadletter_change", args=[dead.pk]), {"doc_id": "x"}
    )
    assert refused.status_code == 403
    assert DeadLetter.objects.get(pk=dead.pk).doc_id == dead.doc_id


def test_detail_page_of_a_delete_says_it_carries_no_document(admin_client: Client) -> None:
    dead = entry(subscription(), "gone", action="delete")

    response = admin_client.get(reverse("admin:syncer_deadletter_change", args=[dead.pk]))

    assert "None: a delete carries no document." in response.content.decode()


def test_retry_selected_confirms_first_then_reports_real_outcomes(
    admin_client: Client, search: OpenSearch
) -> None:
    orders = subscription()
    valid, older, broken, untouched = retry_case(search, orders)

    page = admin_client.post(CHANGELIST, action_post("retry_selected", valid, older, broken))

    content = page.content.decode()
    assert page.status_code == 200
    assert page.templates[0].name == "admin/syncer/deadletter/confirm_action.html"
    assert "<strong>3</strong> dead letters (the selected entries) will be retried" in content
    assert "orders: 3" in content
    assert 'name="confirm" value="yes"' in content
    assert 'name="csrfmiddlewaretoken"' in content
    assert DeadLetter.objects.count() == 4
    assert not search.exists(index="orders", id="1")

    done = admin_client.post(
        CHANGELIST, confirm_post("retry_selected", valid, older, broken), follow=True
    )

    assert shown_messages(done) == [
        (
            messages.WARNING,
            "3 retried: 1 succeeded, 1 superseded, 1 failed "
            "(failing again: mapper_parsing_exception: 1)",
        )
    ]
    assert sorted(DeadLetter.objects.values_list("doc_id", flat=True)) == ["3", "4"]
    indexed = search.get(index="orders", id="1")
    assert (indexed["_version"], indexed["_source"]) == (100, {"total": 5})
    kept = search.get(index="orders", id="2")
    assert (kept["_version"], kept["_source"]) == (200, {"total": 99})
    failed = DeadLetter.objects.get(pk=broken.pk)
    assert failed.attempts == 3
    assert failed.error_type == "mapper_parsing_exception"
    assert "failed to parse field [total] of type [integer]" in failed.error_reason
    assert "not a number" in failed.error_reason
    assert failed.last_attempt_at > broken.last_attempt_at
    assert DeadLetter.objects.get(pk=untouched.pk).attempts == 1


def test_purge_selected_confirms_first_then_purges_only_those(admin_client: Client) -> None:
    orders = subscription()
    first, second, other = entry(orders, "a"), entry(orders, "b"), entry(orders, "c")

    page = admin_client.post(CHANGELIST, action_post("purge_selected", first, second))

    content = page.content.decode()
    assert "<strong>2</strong> dead letters (the selected entries) will be purged" in content
    assert "Nothing is written to OpenSearch" in content
    assert DeadLetter.objects.count() == 3

    done = admin_client.post(CHANGELIST, confirm_post("purge_selected", first, second), follow=True)

    assert shown_messages(done) == [(messages.SUCCESS, "Purged 2 dead letters")]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [other.pk]


def test_purge_with_select_all_applies_the_lists_filters(admin_client: Client) -> None:
    orders, customers = subscription(), subscription("customers")
    on_page = [entry(orders, f"o{i}") for i in range(3)]
    for i in range(5):
        entry(orders, f"old{i}", age=dt.timedelta(days=10))
    kept = entry(customers, "c1")
    filtered = f"{CHANGELIST}?subscription__id__exact={orders.pk}"

    page = admin_client.post(filtered, action_post("purge_selected", *on_page, select_across="1"))

    content = page.content.decode()
    assert "<strong>8</strong> dead letters (every entry matching the list" in content
    assert 'name="select_across" value="1"' in content
    assert DeadLetter.objects.count() == 9

    done = admin_client.post(
        filtered, confirm_post("purge_selected", *on_page, select_across="1"), follow=True
    )

    assert shown_messages(done) == [(messages.SUCCESS, "Purged 8 dead letters")]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [kept.pk]


def test_retry_with_select_all_goes_through_every_matching_entry_in_chunks(
    admin_client: Client, search: OpenSearch, settings: Any
) -> None:
    settings.SYNCER_API_DLQ_MAX = 2000  # above the 1,200 here: chunks, not the request bound
    orders, customers = subscription(), subscription("customers")
    now = timezone.now()
    DeadLetter.objects.bulk_create(
        DeadLetter(
            subscription=orders,
            doc_id=str(i),
            action="index",
            payload={"total": i},
            version=10 + i,
            error_type="es_rejected_execution_exception",
            first_failed_at=now,
            last_attempt_at=now,
        )
        for i in range(1_200)  # three chunks of 500 ids
    )
    other = entry(customers, "c1")
    filtered = f"{CHANGELIST}?subscription__id__exact={orders.pk}"
    on_page = list(DeadLetter.objects.filter(subscription=orders)[:3])

    done = admin_client.post(
        filtered, confirm_post("retry_selected", *on_page, select_across="1"), follow=True
    )

    assert shown_messages(done) == [
        (messages.SUCCESS, "1200 retried: 1200 succeeded, 0 superseded, 0 failed")
    ]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [other.pk]
    search.indices.refresh(index="orders")
    assert search.count(index="orders")["count"] == 1_200


def test_entry_page_retry_button_leads_to_the_confirmation(admin_client: Client) -> None:
    dead = entry(subscription(), "a")

    page = admin_client.post(CHANGELIST, action_post("retry_selected", dead))

    assert "<strong>1</strong> dead letter (the selected entries) will be retried" in (
        page.content.decode()
    )
    assert DeadLetter.objects.get(pk=dead.pk).attempts == 1


def test_retry_with_opensearch_unreachable_says_so_and_keeps_the_entries(
    admin_client: Client, settings: Any
) -> None:
    settings.OPENSEARCH_URL = UNREACHABLE
    orders = subscription()
    entries = [entry(orders, str(i), attempts=2) for i in range(3)]

    done = admin_client.post(CHANGELIST, confirm_post("retry_selected", *entries), follow=True)

    [(level, text)] = shown_messages(done)
    assert level == messages.ERROR
    assert text.startswith("Retry stopped: checking index orders: cannot reach OpenSearch")
    assert "Done before it stopped: 0 retried: 0 succeeded, 0 superseded, 0 failed." in text
    assert "The other entries are kept" in text
    assert sorted(DeadLetter.objects.values_list("attempts", flat=True)) == [2, 2, 2]


def test_retry_all_of_a_subscription_previews_then_retries_only_it(
    admin_client: Client, search: OpenSearch
) -> None:
    orders, customers = subscription(), subscription("customers")
    search.indices.create(index="orders", body=TOTAL_IS_INTEGER)
    for i in range(3):
        entry(orders, str(i), payload={"total": i}, version=10 + i)
    other = entry(customers, "c1")

    listing = admin_client.get(CHANGELIST, {"subscription__id__exact": orders.pk})
    assert f'href="{RETRY_URL}?subscription=orders"' in listing.content.decode()
    preview = admin_client.get(RETRY_URL, {"subscription": "orders"})

    content = preview.content.decode()
    assert "3 dead letters (subscription orders) will be retried" in content
    assert 'value="Yes, retry 3 dead letters"' in content
    assert DeadLetter.objects.count() == 4

    done = admin_client.post(RETRY_URL, {"subscription": "orders"}, follow=True)

    assert shown_messages(done) == [
        (messages.SUCCESS, "3 retried: 3 succeeded, 0 superseded, 0 failed")
    ]
    assert done.redirect_chain == [(f"{CHANGELIST}?subscription__id__exact={orders.pk}", 302)]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [other.pk]
    assert search.get(index="orders", id="2")["_version"] == 12


def test_retry_all_needs_a_subscription(admin_client: Client) -> None:
    entry(subscription(), "a")

    page = admin_client.post(RETRY_URL, {"subscription": ""})

    assert page.status_code == 200
    assert page.context["form"].errors["subscription"] == ["This field is required."]
    assert DeadLetter.objects.count() == 1


def test_purge_older_than_keeps_younger_entries(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_letters, "LARGE", 2)  # the hint for big operations
    orders, customers = subscription(), subscription("customers")
    young = entry(orders, "young", age=dt.timedelta(days=6, hours=23))
    entry(orders, "old", age=dt.timedelta(days=7, minutes=1))
    entry(customers, "older", age=dt.timedelta(days=30))

    preview = admin_client.get(PURGE_URL, {"older_than_days": "7"})

    content = preview.content.decode()
    assert "2 dead letters (every subscription, last failed 7 days ago or more)" in content
    assert "<code>manage.py dlq purge</code>" in content
    assert DeadLetter.objects.count() == 3

    done = admin_client.post(PURGE_URL, {"subscription": "", "older_than_days": "7"}, follow=True)

    assert shown_messages(done) == [(messages.SUCCESS, "Purged 2 dead letters")]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [young.pk]


def test_purge_all_of_a_subscription_keeps_the_others(admin_client: Client) -> None:
    orders, customers = subscription(), subscription("customers")
    entry(orders, "a")
    entry(orders, "b", age=dt.timedelta(days=90))
    other = entry(customers, "c")

    done = admin_client.post(PURGE_URL, {"subscription": "orders"}, follow=True)

    assert shown_messages(done) == [(messages.SUCCESS, "Purged 2 dead letters")]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [other.pk]


def test_purge_page_refuses_to_purge_everything_and_bad_input(admin_client: Client) -> None:
    entry(subscription(), "a", age=dt.timedelta(days=90))

    everything = admin_client.post(PURGE_URL, {"subscription": "", "older_than_days": ""})
    negative = admin_client.post(PURGE_URL, {"older_than_days": "-1"})
    unknown = admin_client.get(PURGE_URL, {"subscription": "nope"})

    assert (
        everything.context["form"]
        .non_field_errors()[0]
        .startswith("Choose a subscription, an age, or both.")
    )
    assert negative.context["form"].errors["older_than_days"]
    assert unknown.context["form"].errors["subscription"]
    assert unknown.context["preview"] is None
    assert DeadLetter.objects.count() == 1


def test_a_viewer_sees_entries_but_cannot_retry_or_purge(client: Client) -> None:
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(viewer)
    dead = entry(subscription(), "a")

    listing = client.get(CHANGELIST)
    refused = client.post(CHANGELIST, confirm_post("purge_selected", dead))

    assert listing.status_code == 200
    assert listing.context["action_form"] is None  # no action offered at all
    assert RETRY_URL not in listing.content.decode()
    assert PURGE_URL not in listing.content.decode()
    assert client.get(RETRY_URL).status_code == 403
    assert client.post(PURGE_URL, {"subscription": "orders"}).status_code == 403
    assert refused.status_code == 200  # the list again, the action ignored
    assert DeadLetter.objects.filter(pk=dead.pk).exists()


def test_the_subscription_list_links_each_dead_letter_count_to_its_entries(
    admin_client: Client,
) -> None:
    orders, customers = subscription("orders"), subscription("customers")
    entry(orders, "a")
    entry(orders, "b")
    page = admin_client.get(reverse("admin:syncer_subscription_changelist")).content.decode()
    link = f'{CHANGELIST}?subscription__id__exact={orders.pk}">2</a>'
    assert link in page
    assert f"subscription__id__exact={customers.pk}" not in page  # none: no link
    filtered = admin_client.get(CHANGELIST, {"subscription__id__exact": orders.pk})
    assert filtered.context["cl"].result_count == 2
