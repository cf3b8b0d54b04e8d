"""Live subscriptions: a client's filtered interest in one subscription's changes, with a TTL."""


import django.db.models.deletion
import django.utils.timezone
import syncer.validators
import uuid
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('syncer', '0006_index_ownership'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='LiveSubscription',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('gateway_id', models.CharField(help_text="The caller's own name for itself, the same across its restarts.", max_length=128, validators=[syncer.validators.validate_gateway_id], verbose_name='gateway id')),
                ('filter', models.TextField(help_text='The CEL expression a change must match.')),
                ('pinned', models.BooleanField(default=True, editable=False, help_text='Whether the filter pins a value (a top-level `doc.field == literal` or `in [...]`): an unpinned one is evaluated on every change, so a subscription may hold only a few (LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION).')),
                ('delivery', models.CharField(choices=[('websocket', 'Websocket (/ws/live/)'), ('nats', 'NATS JetStream (events.{gateway_id}.{id})')], max_length=10)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ('expires_at', models.DateTimeField(help_text='Removed after this unless a heartbeat renews it first.')),
                ('owner', models.ForeignKey(help_text='The user of the API token that registered it.', on_delete=django.db.models.deletion.CASCADE, related_name='live_subscriptions', to=settings.AUTH_USER_MODEL)),
                ('subscription', models.ForeignKey(help_text='The sync subscription whose changes it watches.', on_delete=django.db.models.deletion.CASCADE, related_name='live_subscriptions', to='syncer.subscription')),
            ],
            options={
                'verbose_name': 'live subscription',
                'ordering': ['created_at', 'id'],
                'indexes': [models.Index(fields=['expires_at'], name='livesubscription_expires'), models.Index(fields=['owner', 'gateway_id', 'created_at', 'id'], name='livesubscription_gateway'), models.Index(fields=['subscription', 'pinned'], name='livesubscription_sub')],
                'constraints': [models.CheckConstraint(condition=models.Q(('delivery__in', ['websocket', 'nats'])), name='livesubscription_delivery_known'), models.CheckConstraint(condition=models.Q(('gateway_id__regex', '^[A-Za-z0-9_-]+$')), name='livesubscription_gateway_id_token'), models.CheckConstraint(condition=models.Q(('expires_at__gt', models.F('created_at'))), name='livesubscription_expires_after_created')],
            },
        ),
    ]
