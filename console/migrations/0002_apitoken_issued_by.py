"""API tokens record who issued them."""

from __future__ import annotations

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="issued_by",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                help_text="Who issued it (the token's user or a superuser); empty: issued from "
                "the shell with `manage.py createapitoken` without --issued-by.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="issued_api_tokens",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
    ]
