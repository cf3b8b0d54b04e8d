"""The admin's "Trace a document" page: one document end to end (`syncer.operations.trace`).

`/admin/syncer/subscription/trace/?subscription=NAME&key=KEY`, registered by the
subscription admin. It needs the view permission on subscriptions (403 without it),
shows the row and the document field by field with what differs, the version and the
checkpoint, the dead letter (linked to its page), and this document's live events as
they arrive: the page opens the subscription's events websocket (`trace.js`) with a
filter on the document id, since the console keeps no record of past events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django import forms
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from syncer.errors import InvalidKey
from syncer.models import Subscription
from syncer.operations.trace import AGREEMENT_TEXT, Trace, trace

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

    _Admin = ModelAdmin[Subscription]
else:
    _Admin = Any

TEMPLATE = "admin/syncer/subscription/trace.html"
_MISSING = object()


class TraceForm(forms.Form):
    subscription = forms.ChoiceField(label="Subscription")
    key = forms.CharField(
        label="Document key",
        strip=False,
        max_length=10_000,
        help_text="The document id as the monitor and the dead letters show it. A composite "
        "key's values are joined by | in the key columns' order (e.g. eu|42), with \\ and | "
        "inside a value written \\\\ and \\|.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = Subscription.objects.order_by("name").values_list("name", flat=True)
        field = self.fields["subscription"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [(name, name) for name in names]


@dataclass(frozen=True)
class FieldRow:
    """One field of the row and of the document, side by side."""

    name: str
    row: str
    document: str
    differs: bool


def trace_view(model_admin: _Admin, request: HttpRequest) -> HttpResponse:
    """GET with `subscription` and `key`: the trace; without them, the form alone."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form = TraceForm(request.GET if "key" in request.GET else None, initial=request.GET.dict())
    context: dict[str, Any] = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Trace a document",
        "form": form,
    }
    if form.is_valid():
        subscription = Subscription.objects.get(name=form.cleaned_data["subscription"])
        may_see_dead_letters = request.user.has_perm("syncer.view_deadletter")
        context["dead_letters_shown"] = may_see_dead_letters
        try:
            found = async_to_sync(trace)(
                subscription, form.cleaned_data["key"], dead_letters=may_see_dead_letters
            )
        except InvalidKey as exc:
            form.add_error("key", str(exc))
        else:
            context.update(_shown(found, subscription))
    return TemplateResponse(request, TEMPLATE, context)


def _shown(found: Trace, subscription: Subscription) -> dict[str, Any]:
    dead = found.dead_letter
    return {
        "trace": found,
        "agreement_text": AGREEMENT_TEXT[found.agreement],
        "fields": _fields(found),
        "key_pairs": list(zip(found.key_columns, found.key, strict=True)) if found.key else [],
        "dead_letter_url": (
            reverse("admin:syncer_deadletter_change", args=[dead.id]) if dead else ""
        ),
        "subscription_url": reverse("admin:syncer_subscription_change", args=[subscription.pk]),
        "trace_config": {
            "eventsPath": f"/ws/subscriptions/{subscription.name}/events/",
            "docId": found.doc_id,
        },
    }


def _fields(found: Trace) -> list[FieldRow]:
    """The row's and the document's fields, side by side (either may be absent)."""
    row = found.row or {}
    document = found.document.source if found.document is not None else {}
    if not row and not document:
        return []
    differing = set(found.differing)
    return [
        FieldRow(
            name,
            _value(row.get(name, _MISSING), found.row is not None),
            _value(document.get(name, _MISSING), found.document is not None),
            name in differing,
        )
        for name in sorted(set(row) | set(document))
    ]


def _value(value: Any, present: bool) -> str:
    if not present:
        return ""
    if value is _MISSING:
        return "(no such field)"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
