"""The admin of live subscriptions: a read-only list, its filters, and a delete action.

Clients register, renew and delete their own live subscriptions through the API; the
admin is for operators looking at who watches what, and removing what should not be
there. It adds and changes nothing (the quotas and the TTL are the operations'); deleting
goes through `syncer.operations.live_subscriptions.delete_selected` and needs the delete
permission, so a view-only staff user can look and nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from syncer import text
from syncer.models import LiveSubscription
from syncer.operations import live_subscriptions

if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin[LiveSubscription]
else:
    _AdminBase = admin.ModelAdmin


class ExpiresFilter(admin.SimpleListFilter):
    """Live subscriptions by how soon they expire without a heartbeat."""

    title = "expires"
    parameter_name = "expires"
    WINDOWS = {
        "1m": ("within 1 minute", timedelta(minutes=1)),
        "10m": ("within 10 minutes", timedelta(minutes=10)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            *((value, label) for value, (label, _) in self.WINDOWS.items()),
            ("expired", "expired (not yet removed)"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        window = self.WINDOWS.get(self.value() or "")
        if window is None:
            return queryset
        return queryset.filter(expires_at__gt=now, expires_at__lte=now + window[1])


class LiveSubscriptionAdmin(_AdminBase):
    list_display = (
        "id",
        "owner",
        "gateway_id",
        "subscription",
        "delivery",
        "pinned",
        "short_filter",
        "created_at",
        "expires_in",
    )
    list_filter = (
        ("owner", admin.RelatedOnlyFieldListFilter),
        ("gateway_id", admin.AllValuesFieldListFilter),
        "subscription",
        "delivery",
        "pinned",
        ExpiresFilter,
    )
    search_fields = ("=gateway_id", "filter")
    search_help_text = "Search by exact gateway id, or by filter text."
    list_select_related = ("owner", "subscription")
    show_full_result_count = False  # one count(*) fewer per page, over up to 200,000 rows
    ordering = ("created_at", "id")
    readonly_fields = (
        "id",
        "owner",
        "gateway_id",
        "subscription",
        "filter",
        "pinned",
        "delivery",
        "created_at",
        "expires_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # registered by clients, with their quotas: through the API

    def has_change_permission(
        self, request: HttpRequest, obj: LiveSubscription | None = None
    ) -> bool:
        return False

    @admin.display(description="filter")
    def short_filter(self, obj: LiveSubscription) -> str:
        return text.short(obj.filter, 80)

    @admin.display(description="expires", ordering="expires_at")
    def expires_in(self, obj: LiveSubscription) -> str:
        now = timezone.now()
        if obj.expires_at <= now:
            return f"expired {text.age_text(obj.expires_at, now)} ago"
        return f"in {text.age_text(now, obj.expires_at)}"

    # Django's delete action and page (with their confirmation and the delete permission),
    # carried out by the operation.

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[LiveSubscription]) -> None:
        live_subscriptions.delete_selected(queryset)

    def delete_model(self, request: HttpRequest, obj: LiveSubscription) -> None:
        live_subscriptions.delete_selected(LiveSubscription.objects.filter(pk=obj.pk))


admin.site.register(LiveSubscription, LiveSubscriptionAdmin)
