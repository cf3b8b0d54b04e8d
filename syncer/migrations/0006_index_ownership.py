"""One index per subscription, and the `adopt_index` choice.

Subscriptions that already share an index cannot be split here: which one keeps it,
and where the other should write, is the operator's call. The migration refuses,
naming them, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models
from django.db.models import Count


def refuse_shared_indexes(apps: Any, schema_editor: Any) -> None:
    Subscription = apps.get_model("syncer", "Subscription")
    shared = (
        Subscription.objects.values("index_name")
        .annotate(count=Count("id"))
        .filter(count__gt=1)
        .order_by("index_name")
    )
    problems = []
    for row in shared:
        names = Subscription.objects.filter(index_name=row["index_name"]).order_by("name")
        listed = ", ".join(names.values_list("name", flat=True))
        problems.append(f"index {row['index_name']}: subscriptions {listed}")
    if problems:
        raise RuntimeError(
            "each index may now belong to one subscription only, and these share one: "
            + "; ".join(problems)
            + ". Give all but one of each another index name (in the admin or with "
            "`manage.py subscriptions apply`) and migrate again; nothing was changed."
        )


class Migration(migrations.Migration):
    dependencies = [
        ("syncer", "0005_deadletter_last_attempt"),
    ]

    operations = [
        migrations.RunPython(refuse_shared_indexes, migrations.RunPython.noop, elidable=False),
        migrations.AddField(
            model_name="subscription",
            name="adopt_index",
            field=models.BooleanField(
                default=False,
                help_text="Searchsync marks the indexes it creates, and only those may be "
                "swept by a resync or deleted by a swap to a new index. Tick this to make an "
                "existing index that holds only this subscription's documents searchsync's "
                "(it is marked on the next start). Without it, searchsync writes into such "
                "an index but refuses to remove anything from it.",
                verbose_name="adopt index",
            ),
        ),
        migrations.AddConstraint(
            model_name="subscription",
            constraint=models.UniqueConstraint(
                deferrable=models.Deferrable.DEFERRED,
                fields=("index_name",),
                name="subscription_index_unique",
            ),
        ),
    ]
