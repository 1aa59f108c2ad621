"""Channel health from its deliveries: when it started failing, when it last got through."""

from django.db import migrations, models
from django.db.models import F


def backfill(apps, schema_editor):
    AlertChannel = apps.get_model("notify", "AlertChannel")
    Notification = apps.get_model("notify", "Notification")
    AlertChannel.objects.exclude(last_error="").update(failing_since=F("last_error_at"))
    for channel in AlertChannel.objects.all().iterator():
        sent = Notification.objects.filter(channel=channel, status="sent").order_by("-sent_at").first()
        if sent is not None and sent.sent_at is not None:
            AlertChannel.objects.filter(pk=channel.pk).update(last_delivered_at=sent.sent_at)


class Migration(migrations.Migration):
    dependencies = [("notify", "0002_unpriced_usage_kind")]

    operations = [
        migrations.AddField(
            model_name="alertchannel",
            name="failing_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="alertchannel",
            name="last_delivered_at",
            field=models.DateTimeField(blank=True, help_text="Last alert or test that got through", null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
