# Dead letters: age counts from the last failure (indexed), and the document id is kept
# whole, told apart by its SHA-256 instead of a 512-character prefix.

import syncer.models
from django.db import migrations, models

BACKFILL = """
UPDATE syncer_deadletter
SET doc_id_digest = encode(sha256(convert_to(doc_id, 'UTF8')), 'hex')
"""


class Migration(migrations.Migration):

    dependencies = [
        ('syncer', '0004_operator_control'),
    ]

    operations = [
        migrations.AddField(
            model_name='deadletter',
            name='doc_id_digest',
            field=syncer.models.DocIdDigestField(default='', editable=False, help_text='SHA-256 of the document id.', max_length=64),
            preserve_default=False,
        ),
        # The same digest as syncer.models.doc_id_digest (the database's encoding is UTF-8).
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.RemoveConstraint(
            model_name='deadletter',
            name='deadletter_one_per_document',
        ),
        migrations.AlterField(
            model_name='deadletter',
            name='doc_id',
            field=models.TextField(verbose_name='document id'),
        ),
        migrations.AlterField(
            model_name='deadletter',
            name='last_attempt_at',
            field=models.DateTimeField(help_text="The last failure: an entry's age, for purges and filters, counts from it."),
        ),
        migrations.AddIndex(
            model_name='deadletter',
            index=models.Index(fields=['last_attempt_at'], name='deadletter_last_attempt'),
        ),
        migrations.AddConstraint(
            model_name='deadletter',
            constraint=models.UniqueConstraint(fields=('subscription', 'doc_id_digest'), name='deadletter_one_per_document'),
        ),
    ]
