"""The admin of subscriptions: edit the configuration, read the worker's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import psycopg.conninfo
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from syncer import display, dsn, services
from syncer.logconfig import redact
from syncer.models import Subscription
from syncer.positions import format_position
from syncer.validators import text_problem

if TYPE_CHECKING:
    _FormBase = forms.ModelForm[Subscription]
    _AdminBase = admin.ModelAdmin[Subscription]
else:
    _FormBase = forms.ModelForm
    _AdminBase = admin.ModelAdmin

_STATUS_COLOURS: dict[str, str] = {
    Subscription.Status.STOPPED: "#6c757d",
    Subscription.Status.STARTING: "#0d6efd",
    Subscription.Status.SNAPSHOTTING: "#0d6efd",
    Subscription.Status.STREAMING: "#198754",
    Subscription.Status.CAUGHT_UP: "#198754",
    Subscription.Status.BACKPRESSURE: "#fd7e14",
    Subscription.Status.SINK_UNAVAILABLE: "#dc3545",
    Subscription.Status.RECONNECTING: "#fd7e14",
    Subscription.Status.ERROR: "#dc3545",
}


class KeyColumnsField(forms.Field):
    """Key columns typed as `order_id, line_no`; empty means the primary key."""

    widget = forms.TextInput

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return value
        columns = [part.strip() for part in str(value or "").split(",") if part.strip()]
        for column in columns:
            problem = text_problem(column)
            if problem:
                raise ValidationError(f"a column name {problem}")
        return columns


class RedactedDSNInput(forms.TextInput):
    """A DSN input that never puts a password in the page, even one just typed."""

    def format_value(self, value: Any) -> str | None:
        return (
            dsn.redact(value) if isinstance(value, str) and value else super().format_value(value)
        )


class SubscriptionForm(_FormBase):
    """The subscription form; the DSN is shown without its password and kept if untouched."""

    key_columns = KeyColumnsField(
        required=False,
        help_text="Comma-separated column names that identify a document; "
        "empty means the primary key (PostgreSQL only: Materialize sources need them).",
    )

    class Meta:
        model = Subscription
        fields = "__all__"
        widgets: ClassVar[dict[str, forms.Widget]] = {
            "source_dsn": RedactedDSNInput(attrs={"size": 80, "autocomplete": "off"}),
            "relation": forms.Textarea(attrs={"rows": 2, "cols": 80}),
            "index_settings": forms.Textarea(attrs={"rows": 4, "cols": 80}),
            "index_mappings": forms.Textarea(attrs={"rows": 8, "cols": 80}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stored_dsn = self.instance.source_dsn if self.instance.pk else None
        if self._stored_dsn is not None:
            self.initial["source_dsn"] = dsn.redact(self._stored_dsn)
            self.fields["source_dsn"].help_text = (
                f"{self.fields['source_dsn'].help_text} The password is hidden as ***: leave "
                "the DSN as shown to keep it, or type the whole DSN to replace it."
            )

    def clean_source_dsn(self) -> str:
        value: str = self.cleaned_data["source_dsn"]
        if self._stored_dsn is not None and value == dsn.redact(self._stored_dsn):
            return self._stored_dsn
        if _password_of(value) == "***":
            raise ValidationError(
                "*** stands for the stored password only when the DSN is left exactly as "
                "shown; to change the DSN, type it whole, password included"
            )
        return value

    def clean_index_settings(self) -> Any:
        return _empty_as_object(self.cleaned_data.get("index_settings"))

    def clean_index_mappings(self) -> Any:
        return _empty_as_object(self.cleaned_data.get("index_mappings"))


def _password_of(value: str) -> str | None:
    try:
        password = psycopg.conninfo.conninfo_to_dict(value).get("password")
    except psycopg.ProgrammingError:
        return None  # the model's validator explains what is wrong with the DSN
    return None if password is None else str(password)


def _empty_as_object(value: Any) -> Any:
    return {} if value is None else value


@admin.register(Subscription)
class SubscriptionAdmin(_AdminBase):
    form = SubscriptionForm
    list_display = (
        "name",
        "enabled",
        "relation_text",
        "index_name",
        "status_badge",
        "status_text",
        "checkpoint_lsn",
        "checkpoint_at",
        "dead_letter_link",
        "last_error_text",
    )
    list_filter = ("enabled", "status", "source_kind", "snapshot_mode")
    search_fields = ("name", "relation", "index_name")
    readonly_fields = (
        "slot_name",
        "status_badge",
        "status_message_full",
        "status_changed_at",
        "checkpoint_lsn",
        "checkpoint_at",
        "snapshot_completed_at",
        "dead_letter_link",
        "last_error_full",
        "last_error_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "enabled")}),
        (
            "Source",
            {
                "fields": (
                    "source_kind",
                    "source_dsn",
                    "relation",
                    "key_columns",
                    "source_cluster",
                    "source_envelope",
                )
            },
        ),
        ("Index", {"fields": ("index_name", "index_settings", "index_mappings")}),
        (
            "Snapshot & batching",
            {"fields": ("snapshot_mode", "batch_max_size", "batch_max_age_ms")},
        ),
        ("Backpressure", {"fields": ("backpressure_pause_at", "backpressure_resume_at")}),
        ("State", {"fields": readonly_fields}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: Subscription | None = None) -> Any:
        if obj is None:  # nothing has run yet: no state to show
            return [fieldset for fieldset in self.fieldsets if fieldset[0] != "State"]
        return super().get_fieldsets(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Subscription]:
        return super().get_queryset(request).annotate(dead_letter_count=Count("dead_letters"))

    @admin.display(description="dead letters", ordering="dead_letter_count")
    def dead_letter_link(self, obj: Subscription) -> str | SafeString:
        count = getattr(obj, "dead_letter_count", None)
        if count is None:
            count = obj.dead_letters.count()
        if not count:
            return "0"
        url = reverse("admin:syncer_deadletter_changelist")
        return format_html('<a href="{}?subscription__id__exact={}">{}</a>', url, obj.pk, count)

    @admin.display(description="relation", ordering="relation")
    def relation_text(self, obj: Subscription) -> str:
        return display.short(obj.relation, 60)  # a Materialize query can be long

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Subscription) -> SafeString:
        colour = _STATUS_COLOURS.get(obj.status, "#6c757d")
        return format_html(
            '<span style="color:#fff;background:{};padding:1px 6px;border-radius:8px;'
            'white-space:nowrap">{}</span>',
            colour,
            obj.get_status_display(),
        )

    @admin.display(description="status message")
    def status_text(self, obj: Subscription) -> str:
        return display.short(obj.status_message, 60)

    @admin.display(description="status message")
    def status_message_full(self, obj: Subscription) -> str:
        return redact(obj.status_message)

    @admin.display(description="checkpoint", ordering="checkpoint")
    def checkpoint_lsn(self, obj: Subscription) -> str:
        return format_position(obj.source_kind, obj.checkpoint)

    @admin.display(description="last error")
    def last_error_text(self, obj: Subscription) -> str:
        return display.short(obj.last_error, 80)

    @admin.display(description="last error")
    def last_error_full(self, obj: Subscription) -> str:
        return redact(obj.last_error)

    def delete_model(self, request: HttpRequest, obj: Subscription) -> None:
        """Delete through the service, which also drops the slot on the source."""
        warning = services.delete_subscription(obj)
        if warning:
            messages.warning(request, warning)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        for subscription in queryset:
            self.delete_model(request, subscription)


from syncer import admin_dead_letters  # noqa: E402,F401
