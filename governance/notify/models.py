"""Alert channels, alerts (each raised once, by dedup key) and their deliveries."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models

from governance.crypto import EncryptedTextField, mask
from governance.models import Tenant


class AlertKind(models.TextChoices):
    THRESHOLD = "threshold", "Threshold crossed"
    EXHAUSTED = "exhausted", "Budget exhausted (a call was denied)"
    FORECAST = "forecast", "Forecast over the limit"
    DRIFT = "drift", "Metered spend drifts from provider-reported spend"
    SYNC_FAILING = "sync_failing", "Provider sync failing"
    UNPRICED_USAGE = "unpriced_usage", "Usage of a model the price catalog does not price"
    OVERSPENT = "overspent", "Spend past an enforcing limit that no hold covered"


def all_alert_kinds() -> list[str]:
    return list(AlertKind.values)


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SLACK = "slack", "Slack incoming webhook"


class ChannelHealth(models.TextChoices):
    OK = "ok", "ok"
    FAILING = "failing", "failing"
    NEVER_TRIED = "never_tried", "never tried"


class AlertChannel(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alert_channels")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    email_addresses = models.JSONField(default=list, blank=True)
    # A Slack webhook URL is a bearer secret: anyone holding it can post to the channel.
    slack_webhook_url = EncryptedTextField(blank=True)
    alert_kinds = models.JSONField(default=all_alert_kinds, blank=True, help_text="Kinds this channel receives")
    enabled = models.BooleanField(default=True)
    # Set by a permanent delivery error (Slack 404, a refused address); cleared by the next success.
    failing = models.BooleanField(default=False)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    # The first error since the last delivery that got through (transient ones too); cleared by a success.
    failing_since = models.DateTimeField(null=True, blank=True)
    last_delivered_at = models.DateTimeField(null=True, blank=True, help_text="Last alert or test that got through")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def slack_webhook_hint(self) -> str:
        """Return the webhook URL with its secret path hidden, for display after saving."""
        url = self.slack_webhook_url
        if not url:
            return ""
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}/{mask(parts.path, 4)}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        kinds = self.alert_kinds
        if not isinstance(kinds, list) or not all(k in AlertKind.values for k in kinds):
            errors["alert_kinds"] = f"Give a list of alert kinds from: {', '.join(AlertKind.values)}."
        if self.kind == ChannelKind.EMAIL:
            errors.update(_email_errors(self.email_addresses))
            if self.slack_webhook_url:
                errors["slack_webhook_url"] = "Only Slack channels have a webhook URL."
        elif self.kind == ChannelKind.SLACK:
            if not self.slack_webhook_url:
                errors["slack_webhook_url"] = "A Slack channel needs its incoming-webhook URL."
            elif not slack_webhook_allowed(self.slack_webhook_url):
                errors["slack_webhook_url"] = (
                    "Give a Slack incoming-webhook URL (https://hooks.slack.com/services/…)."
                )
            if self.email_addresses:
                errors["email_addresses"] = "Only email channels have addresses."
        if errors:
            raise ValidationError(errors)

    def receives(self, kind: str) -> bool:
        return self.enabled and kind in (self.alert_kinds or [])

    @property
    def health(self) -> str:
        """Return ``ok``, ``failing`` or ``never_tried``, from what its deliveries met.

        Failing from the first error (a Slack 500 being retried counts: nothing got through)
        until a delivery or a test gets through again.
        """
        if self.failing or self.failing_since is not None:
            return ChannelHealth.FAILING
        if self.last_delivered_at is not None:
            return ChannelHealth.OK
        return ChannelHealth.NEVER_TRIED


MAX_EMAIL_ADDRESSES = 20


def _email_errors(addresses) -> dict[str, str]:
    if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
        return {"email_addresses": "An email channel needs a list of one or more addresses."}
    if len(addresses) > MAX_EMAIL_ADDRESSES:
        return {"email_addresses": f"At most {MAX_EMAIL_ADDRESSES} addresses."}
    bad = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            bad.append(address)
    if bad:
        return {"email_addresses": f"Not an email address: {', '.join(bad)}."}
    return {}


def slack_webhook_allowed(url: str) -> bool:
    """Return whether ``url`` may be posted to.

    Only Slack's webhook hosts by default: the server posts to whatever URL is saved, so
    an arbitrary one would let an admin aim requests at internal services.
    ``NOTIFY_SLACK_WEBHOOK_PREFIXES`` widens this (tests point it at a local server).
    """
    prefixes = getattr(
        settings,
        "NOTIFY_SLACK_WEBHOOK_PREFIXES",
        ("https://hooks.slack.com/", "https://hooks.slack-gov.com/"),
    )
    return isinstance(url, str) and len(url) <= 500 and url.startswith(tuple(prefixes))


class Alert(models.Model):
    """One event worth telling admins about; its dedup key makes it happen at most once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=20, choices=AlertKind.choices)
    dedup_key = models.CharField(max_length=255)
    budget = models.ForeignKey("budgets.Budget", null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    window = models.ForeignKey(
        "budgets.BudgetWindow", null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    threshold = models.PositiveIntegerField(null=True, blank=True, help_text="Percent, for threshold alerts")
    title = models.CharField(max_length=300)
    body = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["tenant", "dedup_key"], name="alert_dedup_unique")]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return self.title


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped (channel disabled)"


class Notification(models.Model):
    """One delivery of an alert to one channel."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    channel = models.ForeignKey(AlertChannel, on_delete=models.CASCADE, related_name="notifications")
    status = models.CharField(
        max_length=10, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Of the last attempt")
    # The sweep re-enqueues pending deliveries once this has passed (their task was lost).
    next_attempt_at = models.DateTimeField()
    # A worker's claim on a delivery in progress; past it, the claim is considered abandoned.
    claimed_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["alert", "channel"], name="notification_once_per_channel")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.alert} -> {self.channel} ({self.status})"
