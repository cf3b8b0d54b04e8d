"""The admin of the dead-letter queue: read the entries, retry or purge them.

Entries are written by the worker only, so the admin shows them read-only; every
change goes through `syncer.operations.dead_letters` (`retry`, `purge`), which works in
bounded batches.

- Changelist actions "Retry selected…" and "Purge selected…", each through a
  confirmation page. With "select all N", the filtered list itself is handed to the
  service, which walks it in batches: never all rows at once.
- `retry/?subscription=NAME[&older_than_days=N]` and
  `purge/?subscription=NAME&older_than_days=N` (either or both): the subscription-wide
  and age-based operations, linked from the changelist's buttons. A GET previews
  what would happen; only the confirming POST does it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from syncer import text
from syncer.errors import RetryAborted, TooManyForARequest, UnknownSubscription
from syncer.models import DeadLetter, Subscription
from syncer.operations import dead_letters
from syncer.text import redact

if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin[DeadLetter]
else:
    _AdminBase = admin.ModelAdmin

CONFIRM_TEMPLATE = "admin/syncer/deadletter/confirm_action.html"
BULK_TEMPLATE = "admin/syncer/deadletter/bulk.html"
SAMPLE_SIZE = 20
"""Entries listed by name on a confirmation page; the rest are counted."""
LARGE = 10_000
"""From this many entries, a confirmation page suggests `manage.py dlq` instead."""

_WHAT_HAPPENS = {
    "retry": (
        "Each entry's stored document is sent to OpenSearch again, with its original "
        "version. Accepted: the entry is removed. A newer version already indexed: the "
        "entry is removed (superseded). Refused again: the entry stays, with one more "
        "attempt and OpenSearch's new error."
    ),
    "purge": (
        "The entries are deleted from the dead-letter queue. Nothing is written to "
        "OpenSearch: the index keeps whatever it holds for these documents."
    ),
}


class AgeFilter(admin.SimpleListFilter):
    """Entries by when they last failed, as a purge by age counts them (`older_than`)."""

    title = "age"
    parameter_name = "age"
    # value: (label, span, True for "within the span", False for "older than the span")
    WINDOWS: dict[str, tuple[str, timedelta, bool]] = {
        "1h": ("last hour", timedelta(hours=1), True),
        "1d": ("last day", timedelta(days=1), True),
        "gt1d": ("older than 1 day", timedelta(days=1), False),
        "gt7d": ("older than 7 days", timedelta(days=7), False),
        "gt30d": ("older than 30 days", timedelta(days=30), False),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, label) for value, (label, _, _) in self.WINDOWS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        window = self.WINDOWS.get(self.value() or "")
        if window is None:
            return queryset
        _, span, recent = window
        return (
            dead_letters.newer_than(queryset, span)
            if recent
            else dead_letters.older_than(queryset, span)
        )


class DeadLetterChangeList(ChangeList):
    """The changelist never reads payloads: it shows none, and they can be large."""

    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        return super().get_queryset(request, exclude_parameters).defer("payload")


class BulkForm(forms.Form):
    """Which entries a subscription-wide or age-based retry or purge applies to."""

    subscription = forms.ModelChoiceField(
        queryset=Subscription.objects.order_by("name"),
        to_field_name="name",
        required=False,
        empty_label="(every subscription)",
    )
    older_than_days = forms.IntegerField(
        label="Older than (days)",
        min_value=1,
        max_value=36500,
        required=False,
        help_text="Only entries that last failed at least this many days ago; empty for any age.",
    )

    def __init__(self, *args: Any, operation: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.operation = operation
        if operation == "retry":
            field = self.fields["subscription"]
            assert isinstance(field, forms.ModelChoiceField)
            field.required = True
            field.empty_label = "(choose a subscription)"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if (
            self.operation == "purge"
            and not self.errors
            and data.get("subscription") is None
            and data.get("older_than_days") is None
        ):
            raise ValidationError(
                "Choose a subscription, an age, or both. To purge every dead letter, select "
                "all entries on the list and use “Purge selected”, or run "
                "`manage.py dlq purge --all`."
            )
        return data

    def selection(self) -> dead_letters.Selection:
        subscription: Subscription | None = self.cleaned_data.get("subscription")
        days: int | None = self.cleaned_data.get("older_than_days")
        return dead_letters.Selection(
            subscription=subscription.name if subscription else None,
            older_than=timedelta(days=days) if days else None,
        )

    def describe(self) -> str:
        subscription: Subscription | None = self.cleaned_data.get("subscription")
        days: int | None = self.cleaned_data.get("older_than_days")
        parts = [f"subscription {subscription.name}" if subscription else "every subscription"]
        if days:
            parts.append(f"last failed {days} day{'s' if days != 1 else ''} ago or more")
        return ", ".join(parts)


class DeadLetterAdmin(_AdminBase):
    list_display = (
        "subscription",
        "doc_id",
        "action",
        "error_type",
        "short_reason",
        "attempts",
        "age",
    )
    list_filter = ("subscription", "action", "error_type", AgeFilter)
    search_fields = ("doc_id", "error_reason", "error_type")
    search_help_text = "Search by document id or error text."
    list_select_related = ("subscription",)
    show_full_result_count = False  # one count(*) of the whole table fewer per page
    actions = ("retry_selected", "purge_selected")
    fieldsets = (
        (None, {"fields": ("subscription_link", "doc_id", "action", "version", "attempts")}),
        ("Error", {"fields": ("error_json", "first_failed_at", "last_attempt_at", "age")}),
        ("Payload", {"fields": ("payload_json",)}),
    )
    readonly_fields = (
        "subscription_link",
        "doc_id",
        "action",
        "version",
        "attempts",
        "error_json",
        "first_failed_at",
        "last_attempt_at",
        "age",
        "payload_json",
    )

    # -- read-only: the worker writes entries, retry and purge remove them -------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False  # deleting is purging: through the Purge actions only

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"syncer.{get_permission_codename('change', self.opts)}")

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"syncer.{get_permission_codename('delete', self.opts)}")

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DeadLetterChangeList

    # -- columns and fields ------------------------------------------------------------

    @admin.display(description="reason")
    def short_reason(self, obj: DeadLetter) -> str:
        return text.short(obj.error_reason, 80)

    @admin.display(description="age (last failure)", ordering="-last_attempt_at")
    def age(self, obj: DeadLetter) -> str:
        return text.age_text(obj.last_attempt_at)

    @admin.display(description="subscription")
    def subscription_link(self, obj: DeadLetter) -> SafeString:
        url = reverse("admin:syncer_subscription_change", args=[obj.subscription_id])
        return format_html('<a href="{}">{}</a>', url, obj.subscription.name)

    @admin.display(description="error")
    def error_json(self, obj: DeadLetter) -> SafeString:
        return _pretty_json(
            {
                "status": obj.error_status,
                "type": obj.error_type,
                "reason": redact(obj.error_reason),
            }
        )

    @admin.display(description="payload")
    def payload_json(self, obj: DeadLetter) -> SafeString:
        if obj.payload is None and obj.action == DeadLetter.Action.DELETE:
            return format_html("<p>{}</p>", "None: a delete carries no document.")
        return _pretty_json(obj.payload)

    # -- actions on selected rows ------------------------------------------------------

    @admin.action(description="Retry selected dead letters…", permissions=["retry"])
    def retry_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        if request.POST.get("confirm") != "yes":
            return self._confirm_action(request, queryset, "retry", "retry_selected")
        selection = dead_letters.Selection(within=queryset)
        if _too_many(request, "retry", selection, queryset.count()):
            return None
        try:
            _retry_done(request, dead_letters.retry(selection))
        except RetryAborted as exc:
            _retry_aborted(request, exc)
        return None

    @admin.action(description="Purge selected dead letters…", permissions=["purge"])
    def purge_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        if request.POST.get("confirm") != "yes":
            return self._confirm_action(request, queryset, "purge", "purge_selected")
        selection = dead_letters.Selection(within=queryset)
        if not _too_many(request, "purge", selection, queryset.count()):
            messages.success(request, _purged(dead_letters.purge(selection)))
        return None

    def _confirm_action(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], operation: str, action: str
    ) -> TemplateResponse:
        """Say what the action would do; its form posts the same selection back, confirmed."""
        select_across = request.POST.get("select_across") == "1"
        total = queryset.count()
        by_subscription = (
            queryset.order_by()
            .values_list("subscription__name")
            .annotate(n=Count("pk"))
            .order_by("subscription__name")
        )
        sample = (
            queryset.select_related("subscription")
            .defer("payload")
            .order_by("-first_failed_at", "-pk")[:SAMPLE_SIZE]
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{operation.capitalize()} {_dead_letters(total)}?",
            "operation": operation,
            "count": total,
            "selection": (
                "every entry matching the list's current filters and search"
                if select_across
                else "the selected entries"
            ),
            "by_subscription": list(by_subscription),
            "sample": [
                (entry, text.age_text(entry.last_attempt_at), text.short(entry.error_reason))
                for entry in sample
            ],
            "more": max(0, total - SAMPLE_SIZE),
            "what_happens": _WHAT_HAPPENS[operation],
            "large": total >= LARGE,
            "too_many": _bound_problem(operation, dead_letters.Selection(within=queryset), total),
            "action": action,
            "select_across": "1" if select_across else "0",
            "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "cancel_url": request.get_full_path(),
        }
        return TemplateResponse(request, CONFIRM_TEMPLATE, context)

    # -- subscription-wide and age-based operations --------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("retry/", wrap(self.retry_view), name="syncer_deadletter_retry"),
            path("purge/", wrap(self.purge_view), name="syncer_deadletter_purge"),
            *super().get_urls(),
        ]

    def retry_view(self, request: HttpRequest) -> HttpResponse:
        """Retry every entry of a subscription (optionally only those older than N days)."""
        if not self.has_retry_permission(request):
            raise PermissionDenied
        return self._bulk_view(request, "retry")

    def purge_view(self, request: HttpRequest) -> HttpResponse:
        """Purge a subscription's entries, entries older than N days, or both."""
        if not self.has_purge_permission(request):
            raise PermissionDenied
        return self._bulk_view(request, "purge")

    def _bulk_view(self, request: HttpRequest, operation: str) -> HttpResponse:
        if request.method == "POST":
            form = BulkForm(request.POST, operation=operation)
            if form.is_valid():
                self._run_bulk(request, operation, form.selection())
                return HttpResponseRedirect(self._changelist_url(form))
        else:
            form = BulkForm(request.GET or None, operation=operation)
        preview = None
        if form.is_bound and form.is_valid():
            try:
                preview = dead_letters.stats(form.selection())
            except UnknownSubscription as exc:
                form.add_error("subscription", str(exc))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{operation.capitalize()} dead letters",
            "operation": operation,
            "form": form,
            "preview": preview,
            "described": form.describe() if preview is not None else "",
            "what_happens": _WHAT_HAPPENS[operation],
            "large": preview is not None and preview.total >= LARGE,
            "too_many": (
                _bound_problem(operation, form.selection(), preview.total) if preview else None
            ),
            "cancel_url": reverse("admin:syncer_deadletter_changelist"),
        }
        return TemplateResponse(request, BULK_TEMPLATE, context)

    def _run_bulk(
        self, request: HttpRequest, operation: str, selection: dead_letters.Selection
    ) -> None:
        try:
            if _too_many(request, operation, selection, dead_letters.count(selection)):
                return
            if operation == "purge":
                messages.success(request, _purged(dead_letters.purge(selection)))
                return
            _retry_done(request, dead_letters.retry(selection))
        except RetryAborted as exc:
            _retry_aborted(request, exc)
        except UnknownSubscription as exc:
            messages.error(request, f"Nothing was done: {exc}")

    def _changelist_url(self, form: BulkForm) -> str:
        url = reverse("admin:syncer_deadletter_changelist")
        subscription: Subscription | None = form.cleaned_data.get("subscription")
        if subscription is None:
            return url
        return f"{url}?{urlencode({'subscription__id__exact': subscription.pk})}"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Add the retry / purge buttons, aimed at the subscription the list is filtered on."""
        query = {}
        shown = request.GET.get("subscription__id__exact", "")
        if shown.isdigit():
            name = Subscription.objects.filter(pk=int(shown)).values_list("name", flat=True)
            if name:
                query["subscription"] = name[0]
        suffix = f"?{urlencode(query)}" if query else ""
        context = {
            "dlq_retry_url": (
                reverse("admin:syncer_deadletter_retry") + suffix
                if self.has_retry_permission(request)
                else None
            ),
            "dlq_purge_url": (
                reverse("admin:syncer_deadletter_purge") + suffix
                if self.has_purge_permission(request)
                else None
            ),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """Add Retry / Purge buttons for this one entry (they lead to the confirmation)."""
        context = {
            "can_retry": self.has_retry_permission(request),
            "can_purge": self.has_purge_permission(request),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)


admin.site.register(DeadLetter, DeadLetterAdmin)


def _pretty_json(value: Any) -> SafeString:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return format_html('<pre class="dlq-json" style="white-space:pre-wrap">{}</pre>', text)


def _retry_done(request: HttpRequest, report: dead_letters.RetryReport) -> None:
    text = str(report)
    if report.errors:
        failing = ", ".join(f"{kind or 'unknown'}: {n}" for kind, n in report.errors.items())
        text += f" (failing again: {failing})"
    messages.add_message(request, messages.WARNING if report.failed else messages.SUCCESS, text)


def _retry_aborted(request: HttpRequest, exc: RetryAborted) -> None:
    cause = exc.__cause__ or exc
    messages.error(
        request,
        f"Retry stopped: {cause}. Done before it stopped: {exc.report}. "
        "The other entries are kept; retry them when OpenSearch is back.",
    )


def _bound_problem(operation: str, selection: dead_letters.Selection, selected: int) -> str | None:
    """Why this many entries are too many for one request (SYNCER_API_DLQ_MAX), or None."""
    try:
        dead_letters.within_request_bound(
            operation, selection, selected, narrow="filter the list by subscription, age or error"
        )
    except TooManyForARequest as exc:
        return str(exc)
    return None


def _too_many(
    request: HttpRequest, operation: str, selection: dead_letters.Selection, selected: int
) -> bool:
    """Refuse, with a message, an action on more entries than one request may touch."""
    problem = _bound_problem(operation, selection, selected)
    if problem is not None:
        messages.error(request, problem)
    return problem is not None


def _dead_letters(n: int) -> str:
    return f"{n} dead letter{'s' if n != 1 else ''}"


def _purged(n: int) -> str:
    return f"Purged {_dead_letters(n)}"
