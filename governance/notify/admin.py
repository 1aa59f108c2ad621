"""Django admin for alerting. The Slack webhook URL is write-only here as everywhere."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from governance.notify.models import Alert, AlertChannel, Notification


class AlertChannelForm(forms.ModelForm):
    # Never render the saved URL back into the page; an empty input keeps it.
    slack_webhook_url = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to keep the saved URL.",
    )

    class Meta:
        model = AlertChannel
        fields = ["tenant", "name", "kind", "email_addresses", "slack_webhook_url", "alert_kinds", "enabled"]

    def clean_slack_webhook_url(self) -> str:
        value = self.cleaned_data.get("slack_webhook_url") or ""
        return value or (self.instance.slack_webhook_url if self.instance.pk else "")


@admin.register(AlertChannel)
class AlertChannelAdmin(admin.ModelAdmin):
    form = AlertChannelForm
    list_display = ["name", "tenant", "kind", "enabled", "failing", "last_error_at"]
    list_filter = ["tenant", "kind", "enabled", "failing"]
    readonly_fields = ["slack_webhook_hint", "failing", "last_error", "last_error_at", "created_at", "updated_at"]


NOTIFICATION_FIELDS = ["channel", "status", "attempts", "error", "duration_ms", "sent_at", "next_attempt_at"]


class NotificationInline(admin.TabularInline):
    model = Notification
    extra = 0
    can_delete = False
    # A copy typed as admin's field groups; readonly_fields wants plain names.
    fields = [*NOTIFICATION_FIELDS]
    readonly_fields = NOTIFICATION_FIELDS


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["title", "tenant", "kind", "created_at"]
    list_filter = ["tenant", "kind"]
    search_fields = ["title", "dedup_key"]
    readonly_fields = ["tenant", "kind", "dedup_key", "budget", "window", "threshold", "title", "body", "data", "created_at"]
    inlines = [NotificationInline]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["alert", "channel", "status", "attempts", "duration_ms", "sent_at"]
    list_filter = ["status", "channel__kind"]
    raw_id_fields = ["alert", "channel"]
