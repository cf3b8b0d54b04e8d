"""What the console stores of its own: API tokens for automation.

A token is `ssk_<prefix>_<secret>`. Only its SHA-256 is stored, so a leaked database
leaks no usable token; the prefix is public and tells tokens apart in lists and logs.
The whole token is shown once, when it is issued.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, User

TOKEN_PREFIX = "ssk"
_PREFIX_BYTES = 4  # 8 hex characters
_SECRET_BYTES = 32


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, hex (a token is random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def may_issue(issuer: AbstractBaseUser, user: AbstractBaseUser) -> bool:
    """Whether `issuer` may issue a token that acts as `user`: only for oneself, unless a
    superuser (a token carries all its user's permissions)."""
    return issuer.pk == user.pk or bool(getattr(issuer, "is_superuser", False))


def refuse_unless_may_issue(issuer: AbstractBaseUser, user: AbstractBaseUser) -> None:
    if not may_issue(issuer, user):
        raise PermissionDenied(
            f"{issuer.get_username()!r} may issue API tokens only for themselves; "
            f"a superuser can issue one for {user.get_username()!r}"
        )


class ApiToken(models.Model):
    """A bearer token that acts as its user on the REST API, until revoked."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What uses it, e.g. deploy-pipeline.")
    prefix = models.CharField(
        max_length=16, unique=True, editable=False, help_text="Public part, shown in lists."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    read_only = models.BooleanField(
        default=False, help_text="A read-only token can look but not change anything."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="issued_api_tokens",
        help_text="Who issued it (the token's user or a superuser); empty: issued from the "
        "shell with `manage.py createapitoken` without --issued-by.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "name"],
                condition=models.Q(revoked_at__isnull=True),
                name="apitoken_one_live_name_per_user",
                violation_error_message="this user already has a live token with this name; "
                "revoke it or choose another name",
            ),
            models.CheckConstraint(condition=~models.Q(name=""), name="apitoken_name_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({TOKEN_PREFIX}_{self.prefix}_…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def issue(
        cls, user: User, name: str, read_only: bool = False, issued_by: User | None = None
    ) -> tuple[ApiToken, str]:
        """Create a token for `user`, issued by `issued_by` (None: from the shell); return it
        and the whole token text (never stored). PermissionDenied if the issuer may not."""
        if issued_by is not None:
            refuse_unless_may_issue(issued_by, user)
        token = cls(user=user, name=name, read_only=read_only, issued_by=issued_by)
        secret = token.assign_key()
        token.save()
        return token, secret

    def assign_key(self) -> str:
        """Give this unsaved token a fresh prefix and key hash; return the whole token text."""
        prefix = secrets.token_hex(_PREFIX_BYTES)
        while ApiToken.objects.filter(prefix=prefix).exists():
            prefix = secrets.token_hex(_PREFIX_BYTES)
        text = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_hex(_SECRET_BYTES)}"
        self.prefix = prefix
        self.key_hash = hash_token(text)
        return text

    def revoke(self) -> bool:
        """Refuse this token from now on; False if it was already revoked."""
        if self.revoked_at is not None:
            return False
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])
        return True
