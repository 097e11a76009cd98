# Deleting a job becomes a mark (Job.deleting_since: hidden everywhere at once) and a worker's
# reclaim in bounded batches (services.deletion), and an item check no longer holds a database
# constraint on its item: the constraint's check ran once per item deleted (~15 µs each, most of
# the time a 1M-item job took to delete). Both are catalogue changes: no table is rewritten.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("bulkwrites", "0013_item_payload_apart"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="deleting_since",
            field=models.DateTimeField(
                blank=True, help_text="deleted then: hidden everywhere while a worker reclaims its rows", null=True
            ),
        ),
        migrations.AlterField(
            model_name="itemcheck",
            name="item",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="checks",
                to="bulkwrites.item",
            ),
        ),
    ]
