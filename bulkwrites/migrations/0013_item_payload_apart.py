# Payloads move out of the items table into their own (ItemPayload, keyed by job and position):
# recording an outcome then rewrites a ~150-byte item row instead of a ~1.2 KB one (issue 15).

import django.db.models.deletion
from django.db import migrations, models

# Existing ledgers carry over in SQL, in primary-key order: one pass over the items table.
COPY_PAYLOADS = """
    INSERT INTO bulkwrites_itempayload (job_id, position, payload)
    SELECT job_id, position, payload FROM bulkwrites_item WHERE payload IS NOT NULL
    ORDER BY job_id, position
"""
# Back (migrating to 0012): the payloads return to their items.
RESTORE_PAYLOADS = """
    UPDATE bulkwrites_item AS i SET payload = p.payload
    FROM bulkwrites_itempayload AS p WHERE p.job_id = i.job_id AND p.position = i.position
"""


class Migration(migrations.Migration):
    dependencies = [
        ("bulkwrites", "0012_staging_progress_key_hash"),
    ]

    operations = [
        migrations.CreateModel(
            name="ItemPayload",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "job_id", "position", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("position", models.BigIntegerField(help_text="the item's row number in the source")),
                ("payload", models.JSONField(help_text="the item as sent (DynamoDB JSON)")),
                (
                    "job",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="bulkwrites.job",
                    ),
                ),
            ],
            options={
                "ordering": ["job", "position"],
            },
        ),
        migrations.RunSQL(COPY_PAYLOADS, reverse_sql=RESTORE_PAYLOADS),
        migrations.RemoveField(
            model_name="item",
            name="payload",
        ),
    ]
