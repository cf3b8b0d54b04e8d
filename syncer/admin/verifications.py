"""The admin's verification pages: ask (a confirmation page), then watch (a result page).

`verify_selected` (a changelist action) and the "Verify…" button of a subscription's
page lead to one confirmation page, whose form asks whether to repair and whether to
sample; confirming requests a verification of each (`syncer.operations.verify.request`,
run by the subscriptions' worker) and leads to the result page, which reloads itself
every two seconds while one still runs. Both need the change permission: a repair
writes to the index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from syncer.engine.progress import saved_text
from syncer.errors import OperatorError
from syncer.models import Subscription, Verification
from syncer.operations import verify as verifying

if TYPE_CHECKING:
    SubscriptionAdmin = admin.ModelAdmin[Subscription]
else:  # the admin these pages belong to (syncer.admin.subscriptions, which imports this)
    SubscriptionAdmin = admin.ModelAdmin

CONFIRM_TEMPLATE = "admin/syncer/subscription/verify_confirm.html"
RESULT_TEMPLATE = "admin/syncer/subscription/verify_result.html"
RELOAD_SECONDS = 2


class VerifyForm(forms.Form):
    repair = forms.BooleanField(
        required=False,
        label="Repair what differs",
        help_text="Write the rows that are missing or differ, and delete the documents that "
        "should not exist, at the snapshot's position + 1: a change made meanwhile wins. "
        "Documents that are right are not written.",
    )
    sample = forms.IntegerField(
        required=False,
        min_value=1,
        label="Sample",
        help_text="About this many rows and documents; empty: all of them.",
    )


@admin.action(
    description="Verify selected subscriptions against their sources…", permissions=["change"]
)
def verify_selected(
    model_admin: SubscriptionAdmin, request: HttpRequest, queryset: QuerySet[Subscription]
) -> HttpResponse | None:
    chosen = list(queryset)
    if not all(model_admin.has_change_permission(request, s) for s in chosen):
        raise PermissionDenied
    confirmed = request.POST.get("confirm") == "yes"
    form = VerifyForm(request.POST if confirmed else None)
    if confirmed and form.is_valid():
        return _request(model_admin, request, chosen, form)
    return _confirm(
        model_admin,
        request,
        chosen,
        form,
        hidden={"action": "verify_selected"},
        selected_ids=[str(s.pk) for s in chosen],
        form_url=request.get_full_path(),
        cancel_url=request.get_full_path(),
    )


def verify_view(
    model_admin: SubscriptionAdmin, request: HttpRequest, object_id: str
) -> HttpResponse:
    """One subscription's "Verify…" button: the same confirmation page, then the result."""
    subscription = model_admin.get_object(request, object_id)
    if subscription is None:
        raise PermissionDenied
    if not model_admin.has_change_permission(request, subscription):
        raise PermissionDenied
    confirmed = request.method == "POST" and request.POST.get("confirm") == "yes"
    form = VerifyForm(request.POST if confirmed else None)
    if confirmed and form.is_valid():
        return _request(model_admin, request, [subscription], form)
    change_url = reverse("admin:syncer_subscription_change", args=[subscription.pk])
    return _confirm(
        model_admin,
        request,
        [subscription],
        form,
        hidden={},
        selected_ids=[],
        form_url=request.path,
        cancel_url=change_url,
    )


def _confirm(
    model_admin: SubscriptionAdmin,
    request: HttpRequest,
    chosen: list[Subscription],
    form: VerifyForm,
    *,
    hidden: dict[str, str],
    selected_ids: list[str],
    form_url: str,
    cancel_url: str,
) -> TemplateResponse:
    noun = chosen[0].name if len(chosen) == 1 else f"{len(chosen)} subscriptions"
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"Verify {noun}?",
        "noun": noun,
        "subscriptions": [(s, verifying.refusal(s), verifying.latest_done(s)) for s in chosen],
        "form": form,
        "hidden": hidden,
        "selected_ids": selected_ids,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "form_url": form_url,
        "cancel_url": cancel_url,
    }
    return TemplateResponse(request, CONFIRM_TEMPLATE, context)


def _request(
    model_admin: SubscriptionAdmin,
    request: HttpRequest,
    chosen: list[Subscription],
    form: VerifyForm,
) -> HttpResponse:
    repair, sample = form.cleaned_data["repair"], form.cleaned_data["sample"]
    asked: list[int] = []
    for subscription in chosen:
        try:
            verification = verifying.request(
                subscription,
                requested_by=request.user.get_username(),
                repair=repair,
                sample=sample,
            )
        except OperatorError as exc:
            messages.error(request, f"{subscription.name}: {exc}")
            continue
        asked.append(verification.pk)
        what = "verify and repair" if repair else "verify"
        model_admin.log_change(request, subscription, f"Asked to {what} ({verification.pk}).")
    if not asked:
        return HttpResponseRedirect(reverse("admin:syncer_subscription_changelist"))
    ids = ",".join(str(pk) for pk in asked)
    return HttpResponseRedirect(f"{reverse('admin:syncer_subscription_verifications')}?ids={ids}")


def result_view(model_admin: SubscriptionAdmin, request: HttpRequest) -> HttpResponse:
    """The verifications named by `?ids=` (or `?subscription=`: its last 20)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    found = Verification.objects.select_related("subscription")
    ids = [int(i) for i in request.GET.get("ids", "").split(",") if i.strip().isdigit()]
    name = request.GET.get("subscription", "")
    if ids:
        found = found.filter(pk__in=ids[:50])
    elif name:
        found = found.filter(subscription__name=name)[:20]
    else:
        found = found.none()
    shown = [_shown(v) for v in found]
    context: dict[str, Any] = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Verification",
        "verifications": shown,
        "reload": RELOAD_SECONDS if any(v["active"] for v in shown) else None,
    }
    return TemplateResponse(request, RESULT_TEMPLATE, context)


def _shown(verification: Verification) -> dict[str, Any]:
    summary = verifying.summary(verification)
    progress = summary["progress"]
    counts = summary["counts"]
    summary["active"] = verification.state in Verification.ACTIVE
    summary["pace"] = saved_text(progress) if progress else ""
    summary["left"] = max(
        0, verification.drifted - counts.get("repaired", 0) - counts.get("superseded", 0)
    )
    summary["example_rows"] = [
        (kind, example)
        for kind, examples in summary["examples"].items()
        if kind != "repair_errors"
        for example in examples
    ]
    summary["repair_errors"] = summary["examples"].get("repair_errors", [])
    summary["change_url"] = reverse(
        "admin:syncer_subscription_change", args=[verification.subscription_id]
    )
    return summary


def last_verification_text(subscription: Subscription) -> str:
    """The subscription page's line on its last verification."""
    last = verifying.latest_done(subscription)
    if last is None:
        return "never verified"
    counts = last.counts or {}
    when = f"{last.finished_at:%Y-%m-%d %H:%M} UTC" if last.finished_at else ""
    if last.state == Verification.State.FAILED:
        return f"{when}: failed: {last.error}"
    repaired = f", {counts.get('repaired', 0):,} repaired" if last.repair else ", not repaired"
    return (
        f"{when}: {counts.get('checked', 0):,} checked, {last.drifted:,} differed{repaired}"
        f"{' (a sample)' if last.sample else ''}"
    )
