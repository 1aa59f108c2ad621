from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("provider", "0001_initial")]

    operations = [
        migrations.RenameField("providerusagebucket", "seen_at", "synced_at"),
        migrations.RenameField("providercostbucket", "seen_at", "synced_at"),
        migrations.AlterField(
            model_name="providerusagebucket",
            name="synced_at",
            field=models.DateTimeField(help_text="When a sync last wrote this row (new or changed)"),
        ),
        migrations.AlterField(
            model_name="providercostbucket",
            name="synced_at",
            field=models.DateTimeField(help_text="When a sync last wrote this row (new or changed)"),
        ),
    ]
