"""Live subscriptions' running totals (registered, refused by a quota), for the worker's /metrics."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('syncer', '0007_live_subscriptions'),
    ]

    operations = [
        migrations.CreateModel(
            name='LiveSubscriptionCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('event', models.CharField(choices=[('registered', 'Registered'), ('refused', 'Refused by a quota')], max_length=16)),
                ('quota', models.CharField(blank=True, help_text='For refused: the quota that refused (owner, global, unpinned); else empty.', max_length=16)),
                ('total', models.BigIntegerField(default=0)),
            ],
            options={
                'verbose_name': 'live subscription count',
                'constraints': [models.UniqueConstraint(fields=('event', 'quota'), name='livesubscriptioncount_unique')],
            },
        ),
    ]
