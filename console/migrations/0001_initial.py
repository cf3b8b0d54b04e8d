"""API tokens."""

from __future__ import annotations

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ApiToken",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "name",
                    models.CharField(
                        help_text="What uses it, e.g. deploy-pipeline.", max_length=100
                    ),
                ),
                (
                    "prefix",
                    models.CharField(
                        editable=False,
                        help_text="Public part, shown in lists.",
                        max_length=16,
                        unique=True,
                    ),
                ),
                ("key_hash", models.CharField(editable=False, max_length=64, unique=True)),
                (
                    "read_only",
                    models.BooleanField(
                        default=False,
                        help_text="A read-only token can look but not change anything.",
                    ),
                ),
                (
                    "created_at",
                    models.DateTimeField(default=django.utils.timezone.now, editable=False),
                ),
                ("last_used_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("revoked_at", models.DateTimeField(blank=True, editable=False, null=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="api_tokens",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "verbose_name": "API token",
                "ordering": ["-created_at", "-id"],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("revoked_at__isnull", True)),
                        fields=("user", "name"),
                        name="apitoken_one_live_name_per_user",
                        violation_error_message=(
                            "this user already has a live token with this name; "
                            "revoke it or choose another name"
                        ),
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("name", ""), _negated=True),
                        name="apitoken_name_not_empty",
                    ),
                ],
            },
        ),
    ]
