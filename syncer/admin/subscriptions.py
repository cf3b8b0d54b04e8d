"""The admin of subscriptions: edit the configuration, read the worker's state, control it.

- The changelist shows what the owning worker publishes (status, lag, staleness,
  throughput, checkpoint); figures older than `STALE_AFTER` are marked stale.
- Pause, resume, resync and reset checkpoint, as changelist actions and as buttons on a
  subscription's page, each through a confirmation page. They call `syncer.operations.control`,
  which writes the request for the worker, and add an entry to the admin log.
- Saving checks the subscription against the real systems (`syncer.operations.preflight`)
  unless “skip live checks” is ticked.
- The change page lists the latest admin log entries: who changed what, and when.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import actions as admin_actions
from django.contrib.admin import helpers
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from syncer import dsn, text
from syncer.admin import trace as trace_page
from syncer.admin import verifications as verification_pages
from syncer.admin.verifications import verify_selected
from syncer.engine.progress import saved_text
from syncer.errors import DeadLettersRemain
from syncer.models import DeadLetter, Subscription
from syncer.operations import control, preflight, subscriptions
from syncer.sources import kinds
from syncer.sources.kinds import format_position
from syncer.text import redact
from syncer.validators import text_problem

T = TypeVar("T")

if TYPE_CHECKING:
    _FormBase = forms.ModelForm[Subscription]
    _AdminBase = admin.ModelAdmin[Subscription]
else:
    _FormBase = forms.ModelForm
    _AdminBase = admin.ModelAdmin

CONFIRM_TEMPLATE = "admin/syncer/subscription/confirm_control.html"
STALE_AFTER = timedelta(seconds=30)
"""Figures a worker published longer ago than this are shown as stale."""
HISTORY_SIZE = 10
"""Admin log entries listed on a subscription's page; the history view has them all."""

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
    Subscription.Status.PAUSED: "#6f42c1",
}


@dataclass(frozen=True)
class ControlAction:
    """One operator request, as the confirmation page explains it."""

    name: str
    title: str
    verb: str
    """What it does to a subscription: "pause" (orders), "reset the checkpoint of" (orders)."""
    what_happens: str


CONTROL_ACTIONS: dict[str, ControlAction] = {
    "pause": ControlAction(
        "pause",
        "Pause",
        "pause",
        "The worker stops reading the source within seconds and keeps the checkpoint. "
        "Nothing is written to the index until the subscription is resumed; the source "
        "keeps the changes meanwhile (a PostgreSQL replication slot retains WAL).",
    ),
    "resume": ControlAction(
        "resume",
        "Resume",
        "resume",
        "The worker starts reading again from the checkpoint, so the changes made while "
        "paused reach the index.",
    ),
    "resync": ControlAction(
        "resync",
        "Resync",
        "resync",
        "The worker copies the whole source relation into OpenSearch again, then streams "
        "on. The request stays until the copy completes, so a worker that dies during the "
        "copy starts it again.",
    ),
    "reset": ControlAction(
        "reset",
        "Reset checkpoint",
        "reset the checkpoint of",
        "The checkpoint (and the source's resume state) is forgotten: the next start is a "
        "first start in the subscription's snapshot mode. With “index existing rows” the "
        "whole relation is copied again; with “stream new changes only” the changes made "
        "before that start are never sent to the index. Documents already in the index "
        "stay.",
    ),
}

RESYNC_MODE_HELP = {
    Subscription.ResyncMode.IN_PLACE: (
        "Writes every row into the index the subscription uses now, then removes the "
        "documents the copy did not contain. Searches keep working throughout and see the "
        "index converge; documents deleted at the source disappear at the end."
    ),
    Subscription.ResyncMode.NEW_INDEX: (
        "Builds a fresh index beside the current one and, once the copy is complete, swaps "
        "the alias named like the subscription's index to it. Searches see the old index "
        "until the swap, then the new one at once; it needs room for two copies."
    ),
}


class ResyncForm(forms.Form):
    mode = forms.ChoiceField(
        label="How",
        choices=Subscription.ResyncMode.choices,
        initial=Subscription.ResyncMode.IN_PLACE,
        widget=forms.RadioSelect,
    )


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
        return redact(value) if isinstance(value, str) and value else super().format_value(value)


class SubscriptionForm(_FormBase):
    """The subscription form; the DSN is shown without its password and kept if untouched.

    Once every field is valid, the subscription is checked against the source and
    OpenSearch (`syncer.operations.preflight`); their problems become errors of the fields.
    """

    key_columns = KeyColumnsField(
        required=False,
        help_text="Comma-separated column names that identify a document; "
        "empty means the primary key (PostgreSQL only: Materialize sources need them).",
    )
    skip_live_checks = forms.BooleanField(
        required=False,
        label="Skip live checks",
        help_text="Saving connects to the source and to OpenSearch to check the DSN, the "
        "relation, the key columns and the index name. Tick this to save without asking "
        "them, e.g. while one of them is down on purpose.",
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
        if self.instance.pk and not _reads_database(self.instance):
            self.fields.pop("key_columns", None)  # declared, so not left out with the others
        self._stored_dsn = self.instance.source_dsn if self.instance.pk else None
        if self._stored_dsn is not None and "source_dsn" in self.fields:
            self.initial["source_dsn"] = redact(self._stored_dsn)
            self.fields["source_dsn"].help_text = (
                f"{self.fields['source_dsn'].help_text} The password is hidden as ***: leave "
                "the DSN as shown to keep it, or type the whole DSN to replace it."
            )

    def clean_source_dsn(self) -> str:
        # A DSN left as shown keeps the stored one; dsn.validate refuses any other *** one.
        return dsn.unredacted(self.cleaned_data["source_dsn"], self._stored_dsn)

    def clean_index_settings(self) -> Any:
        return _empty_as_object(self.cleaned_data.get("index_settings"))

    def clean_index_mappings(self) -> Any:
        return _empty_as_object(self.cleaned_data.get("index_mappings"))

    def full_clean(self) -> None:
        """After the fields and the model are valid, ask the real systems."""
        super().full_clean()
        if not self.is_bound or self.errors or self.cleaned_data.get("skip_live_checks"):
            return
        for field, problems in preflight.check(self.instance).items():
            for problem in problems:
                self.add_error(field if field in self.fields else None, problem)


def _empty_as_object(value: Any) -> Any:
    return {} if value is None else value


@admin.register(Subscription)
class SubscriptionAdmin(_AdminBase):
    form = SubscriptionForm
    list_display = (
        "name",
        "enabled",
        "source_text",
        "index_name",
        "status_badge",
        "lag_text",
        "staleness_text",
        "throughput_text",
        "dead_letter_link",
        "last_error_text",
        "checkpoint_lsn",
        "checkpoint_at",
        "paused",
    )
    list_filter = ("enabled", "paused", "status", "source_kind", "snapshot_mode")
    search_fields = ("name", "relation", "index_name")
    actions = (
        "delete_selected",
        "pause_selected",
        "resume_selected",
        "resync_selected",
        "reset_selected",
        verify_selected,
    )
    readonly_fields = (
        "slot_name",
        "status_badge",
        "status_message_full",
        "status_changed_at",
        "paused",
        "owner",
        "lag_text",
        "staleness_text",
        "throughput_text",
        "copy_progress_text",
        "stats_at",
        "checkpoint_lsn",
        "checkpoint_at",
        "snapshot_completed_at",
        "resync_requested_at",
        "resync_mode",
        "reset_requested_at",
        "control_version",
        "dead_letter_link",
        "last_verification",
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
        ("Index", {"fields": ("index_name", "index_settings", "index_mappings", "adopt_index")}),
        (
            "Snapshot & batching",
            {"fields": ("snapshot_mode", "batch_max_size", "batch_max_age_ms")},
        ),
        ("Backpressure", {"fields": ("backpressure_pause_at", "backpressure_resume_at")}),
        ("Live checks", {"fields": ("skip_live_checks",)}),
        ("State", {"fields": readonly_fields}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: Subscription | None = None) -> Any:
        if obj is None:  # nothing has run yet: no state to show
            return [fieldset for fieldset in self.fieldsets if fieldset[0] != "State"]
        fieldsets: Any = (
            super().get_fieldsets(request, obj)
            if self.has_change_permission(request, obj)
            else _read_only(self.fieldsets)
        )
        if not _reads_database(obj):
            fieldsets = _without(fieldsets, PUSH_HIDES)
        return fieldsets

    def get_readonly_fields(
        self, request: HttpRequest, obj: Subscription | None = None
    ) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None and not _reads_database(obj):
            # Its documents live only in the index: another kind would have no source
            # to read them from (and the source fields are not on its form).
            fields += ("source_kind",)
        return fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Subscription]:
        return super().get_queryset(request).annotate(dead_letter_count=Count("dead_letters"))

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        # Only what the form edits: the rest of the row (checkpoint, requests, status) is
        # the worker's and an operator's requests', and this form may have been loaded
        # before they changed; writing it back would undo a reset or drop a request.
        obj.save(update_fields=["name", *subscriptions.CONFIG_FIELDS, "updated_at"])

    # -- columns and fields ------------------------------------------------------------

    @admin.display(description="dead letters", ordering="dead_letter_count")
    def dead_letter_link(self, obj: Subscription) -> str | SafeString:
        count = getattr(obj, "dead_letter_count", None)
        if count is None:
            count = obj.dead_letters.count()
        if not count:
            return "0"
        url = reverse("admin:syncer_deadletter_changelist")
        return format_html('<a href="{}?subscription__id__exact={}">{}</a>', url, obj.pk, count)

    @admin.display(description="source", ordering="relation")
    def source_text(self, obj: Subscription) -> SafeString:
        return format_html(
            '<span class="source-kind">{}</span> <span class="relation">{}</span>',
            obj.get_source_kind_display(),
            text.short(obj.relation, 60),  # a Materialize query can be long
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Subscription) -> SafeString:
        colour = _STATUS_COLOURS.get(obj.status, "#6c757d")
        badge = format_html(
            '<span style="color:#fff;background:{};padding:1px 6px;border-radius:8px;'
            'white-space:nowrap">{}</span>',
            colour,
            obj.get_status_display(),
        )
        if not obj.status_message:
            return badge
        return format_html(
            '{} <span class="status-message">{}</span>',
            badge,
            text.short(obj.status_message, 60),
        )

    @admin.display(description="source DSN")
    def source_dsn_shown(self, obj: Subscription) -> str:
        return obj.display_dsn

    @admin.display(description="status message")
    def status_message_full(self, obj: Subscription) -> str:
        return redact(obj.status_message)

    @admin.display(description="lag", ordering="lag_seconds")
    def lag_text(self, obj: Subscription) -> str | SafeString:
        return _figure(obj, obj.lag_seconds, _seconds_text)

    @admin.display(description="staleness", ordering="staleness_seconds")
    def staleness_text(self, obj: Subscription) -> str | SafeString:
        return _figure(obj, obj.staleness_seconds, _seconds_text)

    @admin.display(description="changes/s", ordering="throughput")
    def throughput_text(self, obj: Subscription) -> str | SafeString:
        return _figure(obj, obj.throughput, lambda value: f"{value:,.1f}/s")

    @admin.display(description="copy")
    def copy_progress_text(self, obj: Subscription) -> str | SafeString:
        """A resumable copy under way, as the worker last published it."""
        return _figure(obj, obj.copy_progress, saved_text)

    @admin.display(description="checkpoint", ordering="checkpoint")
    def checkpoint_lsn(self, obj: Subscription) -> str:
        return format_position(obj.source_kind, obj.checkpoint)

    @admin.display(description="last error")
    def last_error_text(self, obj: Subscription) -> str:
        return text.short(obj.last_error, 80)

    @admin.display(description="last error")
    def last_error_full(self, obj: Subscription) -> str:
        return redact(obj.last_error)

    # -- deletes go through the service --------------------------------------------------
    # A subscription's dead letters go with it: the confirmation pages say how many, and
    # deleting them needs the FORCE_FIELD box ticked (`subscriptions.check_deletable`).

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Django's confirmation page, with the subscription's dead letters to confirm."""
        subscription = self.get_object(request, unquote(object_id))
        if subscription is None:
            return super().delete_view(request, object_id, extra_context)
        # Without the permission, Django's own view refuses before anything is checked.
        if request.method == "POST" and self.has_delete_permission(request, subscription):
            try:
                subscriptions.check_deletable([subscription], _forced(request))
            except DeadLettersRemain as exc:
                messages.error(request, _not_forced(exc))
                return HttpResponseRedirect(request.path)  # the confirmation page again
        context = {**_dead_letter_context([subscription]), **(extra_context or {})}
        return super().delete_view(request, object_id, context)

    @admin.action(description="Delete selected subscriptions…", permissions=["delete"])
    def delete_selected(
        self, request: HttpRequest, queryset: QuerySet[Subscription]
    ) -> HttpResponse | None:
        """Django's bulk delete; subscriptions with dead letters need the box ticked."""
        chosen = list(queryset)
        if request.POST.get("post"):
            try:
                subscriptions.check_deletable(chosen, _forced(request))
            except DeadLettersRemain as exc:
                messages.error(request, _not_forced(exc))
                shown = request.POST.copy()
                del shown["post"]  # not confirmed: Django shows the confirmation again
                shown._mutable = False
                request.POST = shown  # type: ignore[assignment]  # the stubs' immutable type
        response = admin_actions.delete_selected(self, request, queryset)
        if isinstance(response, TemplateResponse) and response.context_data is not None:
            response.context_data.update(_dead_letter_context(chosen))
        return response

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """Django's list; dead letters count as deletable for whoever may purge them.

        (The dead-letter admin refuses plain deletes: there, deleting is purging.)
        """
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        dead_letters = self.admin_site.get_model_admin(DeadLetter)
        if getattr(dead_letters, "has_purge_permission", lambda _: False)(request):
            perms_needed.discard(str(DeadLetter._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Subscription) -> None:
        """Delete through the service, which also drops the slot on the source."""
        # delete_view checked the dead letters against the ticked box.
        warning = subscriptions.delete_subscription(obj, force=True)
        if warning:
            messages.warning(request, warning)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        # delete_selected checked the dead letters against the ticked box.
        for subscription in queryset:
            self.delete_model(request, subscription)

    # -- pause, resume, resync, reset: changelist actions ----------------------------------

    @admin.action(description="Pause selected subscriptions…", permissions=["change"])
    def pause_selected(
        self, request: HttpRequest, queryset: QuerySet[Subscription]
    ) -> HttpResponse | None:
        return self._changelist_control(request, queryset, "pause")

    @admin.action(description="Resume selected subscriptions…", permissions=["change"])
    def resume_selected(
        self, request: HttpRequest, queryset: QuerySet[Subscription]
    ) -> HttpResponse | None:
        return self._changelist_control(request, queryset, "resume")

    @admin.action(description="Resync selected subscriptions…", permissions=["change"])
    def resync_selected(
        self, request: HttpRequest, queryset: QuerySet[Subscription]
    ) -> HttpResponse | None:
        return self._changelist_control(request, queryset, "resync")

    @admin.action(
        description="Reset the checkpoint of selected subscriptions…", permissions=["change"]
    )
    def reset_selected(
        self, request: HttpRequest, queryset: QuerySet[Subscription]
    ) -> HttpResponse | None:
        return self._changelist_control(request, queryset, "reset")

    def _changelist_control(
        self, request: HttpRequest, queryset: QuerySet[Subscription], action: str
    ) -> HttpResponse | None:
        subscriptions = list(queryset.order_by("name"))
        confirmed = request.POST.get("confirm") == "yes"
        resync = ResyncForm(request.POST if confirmed else None)
        if confirmed and (action != "resync" or resync.is_valid()):
            self._apply(request, subscriptions, action, _mode(resync))
            return None
        hidden = {
            "action": f"{action}_selected",
            "select_across": request.POST.get("select_across", "0"),
            "index": "0",
        }
        return self._confirm(
            request,
            subscriptions,
            action,
            resync,
            hidden=hidden,
            selected_ids=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            form_url=request.get_full_path(),
            cancel_url=request.get_full_path(),
        )

    # -- the same, for one subscription from its page --------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/control/<str:action>/",
                wrap(self.control_view),
                name="syncer_subscription_control",
            ),
            path("trace/", wrap(self.trace_view), name="syncer_subscription_trace"),
            path(
                "<path:object_id>/verify/",
                wrap(self.verify_view),
                name="syncer_subscription_verify",
            ),
            path(
                "verifications/",
                wrap(self.verifications_view),
                name="syncer_subscription_verifications",
            ),
            *super().get_urls(),
        ]

    def trace_view(self, request: HttpRequest) -> HttpResponse:
        """One document end to end: its row, its document, its dead letter (admin/trace.py)."""
        return trace_page.trace_view(self, request)

    def verify_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Verify this subscription: a confirmation page, then the result (verifications.py)."""
        return verification_pages.verify_view(self, request, object_id)

    def verifications_view(self, request: HttpRequest) -> HttpResponse:
        return verification_pages.result_view(self, request)

    @admin.display(description="Last verification")
    def last_verification(self, obj: Subscription) -> str:
        return verification_pages.last_verification_text(obj)

    def control_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """GET: what `action` would do to this subscription; the confirming POST does it."""
        if action not in CONTROL_ACTIONS:
            raise Http404(f"no action {action!r}")
        subscription = self.get_object(request, object_id)
        if subscription is None:
            raise Http404(f"no subscription with id {object_id!r}")
        if not self.has_change_permission(request, subscription):
            raise PermissionDenied
        change_url = reverse("admin:syncer_subscription_change", args=[subscription.pk])
        confirmed = request.method == "POST" and request.POST.get("confirm") == "yes"
        resync = ResyncForm(request.POST if confirmed else None)
        if confirmed and (action != "resync" or resync.is_valid()):
            self._apply(request, [subscription], action, _mode(resync))
            return HttpResponseRedirect(change_url)
        return self._confirm(
            request,
            [subscription],
            action,
            resync,
            hidden={},
            selected_ids=[],
            form_url=request.path,
            cancel_url=change_url,
        )

    def _confirm(
        self,
        request: HttpRequest,
        subscriptions: list[Subscription],
        action: str,
        resync: ResyncForm,
        *,
        hidden: dict[str, str],
        selected_ids: list[str],
        form_url: str,
        cancel_url: str,
    ) -> TemplateResponse:
        """Say what the action would do, to which subscriptions; its form posts it confirmed."""
        what = CONTROL_ACTIONS[action]
        count = len(subscriptions)
        noun = subscriptions[0].name if count == 1 else f"{count} subscriptions"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{what.verb.capitalize()} {noun}?",
            "control": what,
            "subscriptions": [
                (s, s.get_status_display(), format_position(s.source_kind, s.checkpoint))
                for s in subscriptions
            ],
            "noun": noun,
            "resync_form": resync if action == "resync" else None,
            "resync_modes": [
                (label, RESYNC_MODE_HELP[Subscription.ResyncMode(value)])
                for value, label in Subscription.ResyncMode.choices
            ],
            "hidden": hidden,
            "selected_ids": selected_ids,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "form_url": form_url,
            "cancel_url": cancel_url,
        }
        return TemplateResponse(request, CONFIRM_TEMPLATE, context)

    def _apply(
        self,
        request: HttpRequest,
        subscriptions: Iterable[Subscription],
        action: str,
        mode: str,
    ) -> None:
        """Run the request on each subscription, log what changed, say it in messages."""
        run: dict[str, Callable[[Subscription], control.ControlResult]] = {
            "pause": control.pause,
            "resume": control.resume,
            "resync": lambda s: control.resync(s, mode),
            "reset": control.reset_checkpoint,
        }
        for subscription in subscriptions:
            result = run[action](subscription)
            if result.changed:
                self.log_change(request, subscription, f"{result.message.capitalize()}.")
            level = messages.SUCCESS if result.changed else messages.INFO
            detail = _after(action, subscription) if result.changed else "nothing to do"
            messages.add_message(request, level, f"{subscription.name}: {result.message}; {detail}")

    # -- the change page: buttons and history ----------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """Add the control buttons and the latest admin log entries of this subscription."""
        subscription = self.get_object(request, object_id)
        context: dict[str, Any] = {}
        if subscription is not None:
            context = {
                "control_urls": (
                    _control_urls(subscription)
                    if self.has_change_permission(request, subscription)
                    else {}
                ),
                "recent_changes": _recent_changes(subscription),
                "history_url": reverse("admin:syncer_subscription_history", args=[object_id]),
            }
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )


FORCE_FIELD = "delete_dead_letters"
"""The box a delete confirmation needs ticked when the subscriptions have dead letters."""


def _forced(request: HttpRequest) -> bool:
    return request.POST.get(FORCE_FIELD) == "yes"


def _not_forced(exc: DeadLettersRemain) -> str:
    return f"Nothing was deleted: {exc}. To delete them too, tick “Also delete the dead letters”."


def _dead_letter_context(chosen: list[Subscription]) -> dict[str, Any]:
    counts = subscriptions.dead_letter_counts(chosen)
    return {
        "dead_letters": sum(counts.values()),
        "dead_letter_counts": counts,
        "force_field": FORCE_FIELD,
    }


PUSH_HIDES = (
    "source_dsn",
    "source_dsn_shown",
    "relation",
    "key_columns",
    "source_cluster",
    "source_envelope",
)
"""What a push subscription's page leaves out: it reads no database."""


def _reads_database(subscription: Subscription) -> bool:
    kind = kinds.named(subscription.source_kind)
    return kind is None or kind.reads_database


def _without(fieldsets: Any, hidden: Sequence[str]) -> list[tuple[str | None, dict[str, Any]]]:
    """The fieldsets less the `hidden` fields, and less any fieldset left empty."""
    kept = []
    for title, options in fieldsets:
        fields = tuple(f for f in options["fields"] if f not in hidden)
        if fields:
            kept.append((title, {**options, "fields": fields}))
    return kept


def _read_only(fieldsets: Any) -> list[tuple[str | None, dict[str, Any]]]:
    """The fieldsets for a user who may only view: the DSN as shown, no save options."""
    shown = []
    for title, options in fieldsets:
        if title == "Live checks":
            continue
        fields = tuple("source_dsn_shown" if f == "source_dsn" else f for f in options["fields"])
        shown.append((title, {**options, "fields": fields}))
    return shown


def _control_urls(subscription: Subscription) -> dict[str, str]:
    names = ["resume" if subscription.paused else "pause", "resync", "reset"]
    urls = {
        name: reverse("admin:syncer_subscription_control", args=[subscription.pk, name])
        for name in names
    }
    urls["verify"] = reverse("admin:syncer_subscription_verify", args=[subscription.pk])
    return urls


def _recent_changes(subscription: Subscription) -> list[LogEntry]:
    content_type = ContentType.objects.get_for_model(Subscription)
    entries = LogEntry.objects.filter(
        content_type=content_type, object_id=str(subscription.pk)
    ).select_related("user")
    return list(entries.order_by("-action_time", "-pk")[:HISTORY_SIZE])


def _mode(form: ResyncForm) -> str:
    if form.is_bound and form.is_valid():
        return str(form.cleaned_data["mode"])
    return Subscription.ResyncMode.IN_PLACE


def _after(action: str, subscription: Subscription) -> str:
    """What happens next, now that the request is written."""
    who = f"worker {subscription.owner}" if subscription.owner else "its worker"
    if action == "reset":
        mode = subscription.get_snapshot_mode_display().lower()
        return f"{who} restarts it from scratch ({mode}) within seconds"
    return f"{who} applies it within seconds"


def _figure(obj: Subscription, value: T | None, shown: Callable[[T], str]) -> str | SafeString:
    """A figure the worker published, or "-"; marked stale when it is old."""
    if value is None or obj.stats_at is None:
        return "-"
    age = timezone.now() - obj.stats_at
    if age <= STALE_AFTER:
        return shown(value)
    who = f"worker {obj.owner}" if obj.owner else "the worker"
    return format_html(
        '<span class="stale" style="color:#999;font-style:italic" title="{}">{} (stale)</span>',
        f"published {text.age_text(obj.stats_at)} ago by {who}; it may have stopped",
        shown(value),
    )


def _seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
