"""Load the price catalog (usage/catalog/prices.toml) on a fresh install and on upgrade.

The seed of 0002 priced the first models from 2023-01-01; the catalog keeps those dates for
them, so this corrects their metadata (fast mode, geo, retirement, sources) in place and
adds the newer models. Later price changes go through `manage.py prices_load`, not here.
"""

from django.db import migrations


def load(apps, schema_editor):
    from usage.catalog import catalog_load, catalog_read

    catalog_load(catalog_read(), model_price=apps.get_model("usage", "ModelPrice"), replace=True)


class Migration(migrations.Migration):
    dependencies = [("usage", "0004_catalog_version")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
