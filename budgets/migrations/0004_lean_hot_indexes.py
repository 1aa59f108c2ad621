"""Holds keep only the indexes their queries use (see the model's comments).

The expiry sweep's index becomes a partial one on live holds. On PostgreSQL it is built
CONCURRENTLY, so allowances keep being written while it is built (the old index serves the
sweep until it is dropped, last); hence ``atomic = False``. Dropping an index is quick.
"""

import django.db.models.deletion
from django.db import migrations, models

LIVE_EXPIRY = models.Index(fields=["expires_at"], condition=models.Q(state="held"), name="hold_live_expiry")


def _add_live_expiry(apps, schema_editor):
    Hold = apps.get_model("budgets", "Hold")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(LIVE_EXPIRY.create_sql(Hold, schema_editor, concurrently=True))
    else:
        schema_editor.add_index(Hold, LIVE_EXPIRY)


def _remove_live_expiry(apps, schema_editor):
    Hold = apps.get_model("budgets", "Hold")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(LIVE_EXPIRY.remove_sql(Hold, schema_editor, concurrently=True))
    else:
        schema_editor.remove_index(Hold, LIVE_EXPIRY)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('budgets', '0003_hold_call_shape'),
        ('governance', '0002_invitation_one_time_password'),
        ('usage', '0008_usage_event_off_hold_index'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name='hold', index=LIVE_EXPIRY)],
            database_operations=[migrations.RunPython(_add_live_expiry, _remove_live_expiry)],
        ),
        migrations.RemoveIndex(
            model_name='hold',
            name='budgets_hol_state_0fa224_idx',
        ),
        migrations.AlterField(
            model_name='hold',
            name='api_key',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='governance.apikey'),
        ),
        migrations.AlterField(
            model_name='hold',
            name='feature',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='holds', to='governance.feature'),
        ),
    ]
