"""Load the 2026-12-02 price catalog on upgrade: Mythos 5.2, Fable 5.2's fast mode, Sonnet 4.5 retired.

0005 loaded the catalog once, so an install past it would not see a newer file. This loads it
again without ``replace``: rows an operator corrected by hand for a shipped date are left alone.
The one shipped correction is Fable 5.2's fast-mode multiplier (2x since launch, absent from the
2026-11-24 file), written only where the row still has none.
"""

from datetime import UTC, datetime

from django.db import migrations


def load(apps, schema_editor):
    from usage.catalog import catalog_load, catalog_read

    model_price = apps.get_model("usage", "ModelPrice")
    model_price.objects.filter(
        model="claude-fable-5-2", service_tier="", effective_from=datetime(2026, 11, 9, tzinfo=UTC),
        fast_factor__isnull=True,
    ).update(fast_factor=2)
    catalog_load(catalog_read(), model_price=model_price)


class Migration(migrations.Migration):
    dependencies = [("usage", "0006_event_body_hash_and_run_index")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
