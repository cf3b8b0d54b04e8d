"""The admin of API tokens: issue one (its text is shown once), revoke, see last use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.urls import reverse

from console.models import TOKEN_PREFIX, ApiToken, refuse_unless_may_issue

if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin[ApiToken]
else:
    _AdminBase = admin.ModelAdmin

# The page that shows a new token's text, the only time it is ever shown. Rendered from
# here rather than a redirect with a message: messages may be kept in a cookie.
_ISSUED_PAGE = """{% extends "admin/base_site.html" %}
{% block content %}
<p>Copy the token now: it is stored only as a hash and <strong>cannot be shown again</strong>.
Send it as <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<p><input type="text" readonly size="80" value="{{ token_text }}" id="api-token-text"
  onclick="this.select()"></p>
<p>{{ token.name }} for {{ token.user }}{% if token.read_only %}, read-only{% endif %}.</p>
<p><a href="{{ list_url }}">Back to API tokens</a></p>
{% endblock %}
"""


@admin.register(ApiToken)
class ApiTokenAdmin(_AdminBase):
    list_display = (
        "name",
        "user",
        "shown_prefix",
        "read_only",
        "issued_by",
        "created_at",
        "last_used_at",
        "state",
    )
    list_filter = ("read_only", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix", "user__username")
    actions = ["revoke_selected"]
    fields = ("user", "name", "read_only")
    readonly_on_change = (
        "user",
        "name",
        "read_only",
        "shown_prefix",
        "issued_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    )

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            # The API refuses the tokens of other users, so do not offer them; and a token
            # carries its user's permissions, so only a superuser issues them for others.
            users = get_user_model().objects.filter(is_staff=True, is_active=True)
            issuer = _issuer(request)
            if not issuer.is_superuser:
                users = users.filter(pk=issuer.pk)
                kwargs["initial"] = issuer.pk
            kwargs["queryset"] = users
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return self.readonly_on_change if obj is not None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return self.readonly_on_change if obj is not None else ()

    @admin.display(description="token")
    def shown_prefix(self, obj: ApiToken) -> str:
        return f"{TOKEN_PREFIX}_{obj.prefix}_…" if obj.prefix else "-"

    @admin.display(description="state")
    def state(self, obj: ApiToken) -> str:
        return "revoked" if obj.revoked_at is not None else "active"

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if not change:
            issuer = _issuer(request)
            refuse_unless_may_issue(issuer, obj.user)  # the form offers no other user
            obj.issued_by = issuer
            request._issued_token_text = obj.assign_key()  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None
    ) -> HttpResponse:
        text = getattr(request, "_issued_token_text", None)
        if text is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API token created",
            "token": obj,
            "token_text": text,
            "list_url": reverse("admin:console_apitoken_changelist"),
        }
        page = engines["django"].from_string(_ISSUED_PAGE).render(context, request)
        response = HttpResponse(page)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = [token for token in queryset if token.revoke()]
        for token in revoked:
            self.log_change(request, token, "Revoked")
        already = queryset.count() - len(revoked)
        text = f"Revoked {len(revoked)} token{'s' if len(revoked) != 1 else ''}"
        if already:
            text += f" ({already} already revoked)"
        messages.success(request, text)


def _issuer(request: HttpRequest) -> User:
    """The logged-in user issuing a token (the admin lets in no one else)."""
    if not isinstance(request.user, User):
        raise PermissionDenied
    return request.user
