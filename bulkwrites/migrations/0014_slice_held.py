# Staging while writing (issue 15): a slice holding a later copy of a key already released is
# claimed only once every slice before it is done. A column with a constant default: no rewrite.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("bulkwrites", "0013_item_payload_apart"),
    ]

    operations = [
        migrations.AddField(
            model_name="slice",
            name="held",
            field=models.BooleanField(
                db_default=False, default=False, help_text="claimed only once every slice before it is done"
            ),
        ),
    ]
