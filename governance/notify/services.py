"""Writes of delivery: channels, and each alert's notifications, sent once per channel.

Alerts are raised below this layer (``governance.notify.alerts``); this module hears of each
new one through ``post_save`` and knows channels and messages, not budget rules.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone

from governance import queue
from governance.audit import Actor, audit_record, audit_update, audited_delete
from governance.models import Tenant
from governance.notify.messages import alert_message, channel_test_message
from governance.notify.models import (
    Alert,
    AlertChannel,
    AlertKind,
    Notification,
    NotificationStatus,
)
from governance.notify.transports import TransportError, transport_for

logger = logging.getLogger(__name__)

CHANNEL_FIELDS = ("name", "kind", "email_addresses", "slack_webhook_url", "alert_kinds", "enabled")

# Transient failures are retried with exponential backoff: 30 s, 1 min, 2 min … capped at 1 h,
# and given up (the channel marked failing) after this many attempts, about four hours in all.
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 3600
# A worker's claim lasts longer than a send can (transport timeouts are 10 s); a claim older
# than this belongs to a worker that died, and the sweep may hand the delivery to another.
CLAIM_SECONDS = 120


# --- Channels -------------------------------------------------------------------------------


def channel_snapshot(channel: AlertChannel) -> dict[str, Any]:
    """Return the audited state of a channel; the webhook URL only as its hint."""
    return {
        "name": channel.name,
        "kind": channel.kind,
        "email_addresses": list(channel.email_addresses or []),
        "slack_webhook": channel.slack_webhook_hint,
        "alert_kinds": list(channel.alert_kinds or []),
        "enabled": channel.enabled,
    }


@transaction.atomic
def channel_create(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    kind: str,
    email_addresses: list[str] | None = None,
    slack_webhook_url: str = "",
    alert_kinds: list[str] | None = None,
    enabled: bool = True,
) -> AlertChannel:
    channel = AlertChannel(
        tenant=tenant,
        name=name,
        kind=kind,
        email_addresses=email_addresses or [],
        slack_webhook_url=slack_webhook_url or "",
        alert_kinds=list(AlertKind.values) if alert_kinds is None else alert_kinds,
        enabled=enabled,
    )
    channel.full_clean(exclude=["tenant"])
    channel.save()
    audit_record(tenant=tenant, actor=actor, action="create", obj=channel, after=channel_snapshot(channel))
    return channel


@transaction.atomic
def channel_update(*, channel: AlertChannel, actor: Actor, data: dict[str, Any]) -> AlertChannel:
    """Change a channel; a new webhook URL or new addresses clear its failing state."""
    before = channel_snapshot(channel)
    old_target = (channel.slack_webhook_url, list(channel.email_addresses or []))
    for name, value in data.items():
        if name in CHANNEL_FIELDS and name != "kind":
            setattr(channel, name, value)
    channel.full_clean(exclude=["tenant"])
    if (channel.slack_webhook_url, list(channel.email_addresses or [])) != old_target:
        # A new target has not failed yet (nor been tried).
        channel.failing = False
        channel.last_error = ""
        channel.last_error_at = None
        channel.failing_since = None
        channel.last_delivered_at = None
    channel.save()
    after = channel_snapshot(channel)
    audit_update(actor=actor, obj=channel, before=before, after=after)
    return channel


@transaction.atomic
def channel_delete(*, channel: AlertChannel, actor: Actor) -> None:
    before = channel_snapshot(channel)
    audited_delete(actor=actor, obj=channel, before=before)


@dataclass(frozen=True)
class TestResult:
    delivered: bool
    error: str
    permanent: bool
    duration_ms: int


def channel_test(*, channel: AlertChannel, actor: Actor) -> TestResult:
    """Send a test message now, once, and record the channel's health from the answer.

    Not atomic on purpose: no transaction stays open while Slack or SMTP answers.
    """
    started = time.monotonic()
    try:
        transport_for(channel).send(channel_test_message(tenant=channel.tenant))
    except TransportError as exc:
        duration = _elapsed_ms(started)
        _channel_record_error(channel=channel, error=exc.message, permanent=exc.permanent)
        return TestResult(delivered=False, error=exc.message, permanent=exc.permanent, duration_ms=duration)
    duration = _elapsed_ms(started)
    _channel_record_success(channel=channel)
    return TestResult(delivered=True, error="", permanent=False, duration_ms=duration)


def _channel_record_success(*, channel: AlertChannel) -> None:
    """Note that something got through: the channel is healthy again."""
    now = timezone.now()
    changes: dict[str, Any] = {"last_delivered_at": now}
    if channel.failing or channel.last_error or channel.failing_since is not None:
        changes.update(failing=False, last_error="", last_error_at=None, failing_since=None, updated_at=now)
    AlertChannel.objects.filter(pk=channel.pk).update(**changes)
    for name, value in changes.items():
        setattr(channel, name, value)


def _channel_record_error(*, channel: AlertChannel, error: str, permanent: bool) -> None:
    """Note a failed send: failing from the first error on, until something gets through."""
    now = timezone.now()
    changes: dict[str, Any] = {"last_error": error[:2000], "last_error_at": now, "updated_at": now}
    if permanent:
        changes["failing"] = True
    AlertChannel.objects.filter(pk=channel.pk).update(**changes)
    # Only the first error of a run sets "since"; a conditional update keeps racing workers from moving it.
    if AlertChannel.objects.filter(pk=channel.pk, failing_since__isnull=True).update(failing_since=now):
        channel.failing_since = now
    else:
        channel.failing_since = channel.failing_since or now
    for name, value in changes.items():
        setattr(channel, name, value)


# --- Alerts: one notification per channel that receives the kind --------------------------------


@receiver(post_save, sender=Alert, dispatch_uid="notify.alert_created")
def alert_created(sender, instance: Alert, created: bool, raw: bool = False, **kwargs) -> None:
    """Queue a new alert's deliveries: one notification per enabled channel that receives its kind.

    Runs in the transaction that records the alert (``governance.notify.alerts.alert_raise``);
    the tasks are enqueued once it commits, and the beat sweep sends any the broker missed.
    """
    if created and not raw:
        deliveries_create(instance)


DELIVER = "governance.notify.tasks.deliver_notification"


def enqueue_deliveries(notification_ids: list[int]) -> None:
    for notification_id in notification_ids:
        if not queue.enqueue(DELIVER, [notification_id]):
            return  # the rest would fail the same way; the sweep has them


def deliveries_create(alert: Alert) -> list[int]:
    now = timezone.now()
    channels = [c for c in AlertChannel.objects.filter(tenant_id=alert.tenant_id, enabled=True) if c.receives(alert.kind)]
    notifications = Notification.objects.bulk_create(
        [Notification(alert=alert, channel=c, next_attempt_at=now) for c in channels]
    )
    ids = [n.pk for n in notifications]
    if ids:
        transaction.on_commit(lambda: enqueue_deliveries(ids), robust=True)
    logger.info("alert raised: tenant %s %s (%d notification(s))", alert.tenant_id, alert.dedup_key, len(ids))
    return ids


# --- Delivery ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOutcome:
    status: str  # "sent", "retry", "failed", "skipped", "not_claimed"
    retry_in: int | None = None


def backoff_seconds(attempts: int) -> int:
    return min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_CAP_SECONDS)


def notification_claim(*, notification_id: int, now: datetime | None = None) -> bool:
    """Claim a delivery for this worker; False when it is done or another worker holds it.

    One conditional UPDATE: of two workers racing for the same row, exactly one matches.
    """
    now = now or timezone.now()
    claimable = Q(status=NotificationStatus.PENDING) | Q(
        status=NotificationStatus.SENDING, claimed_until__lt=now
    )
    return bool(
        Notification.objects.filter(claimable, pk=notification_id).update(
            status=NotificationStatus.SENDING,
            claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
            attempts=F("attempts") + 1,
            updated_at=now,
        )
    )


def notification_deliver(*, notification_id: int) -> DeliveryOutcome:
    """Claim one delivery, send it, and record the answer; say whether and when to retry.

    Not atomic on purpose: the claim must be visible to other workers before the send,
    and no transaction should stay open while Slack or SMTP answers.
    """
    if not notification_claim(notification_id=notification_id):
        return DeliveryOutcome("not_claimed")
    notification = Notification.objects.select_related(
        "alert__tenant", "alert__budget", "channel"
    ).get(pk=notification_id)
    channel = notification.channel
    if not channel.enabled:
        _notification_finish(notification, status=NotificationStatus.SKIPPED, error="The channel is disabled.")
        return DeliveryOutcome("skipped")

    started = time.monotonic()
    try:
        transport_for(channel).send(alert_message(notification.alert))
    except TransportError as exc:
        duration = _elapsed_ms(started)
        if not exc.permanent and notification.attempts < MAX_ATTEMPTS:
            delay = backoff_seconds(notification.attempts)
            if exc.retry_after is not None:
                delay = min(max(delay, exc.retry_after), BACKOFF_CAP_SECONDS)
            _notification_finish(
                notification,
                status=NotificationStatus.PENDING,
                error=exc.message,
                duration_ms=duration,
                next_attempt_at=timezone.now() + timedelta(seconds=delay),
            )
            _channel_record_error(channel=channel, error=exc.message, permanent=False)
            logger.warning("notification %s: %s; retry in %ss", notification_id, exc.message, delay)
            return DeliveryOutcome("retry", retry_in=delay)
        error = exc.message if exc.permanent else f"Gave up after {notification.attempts} attempts: {exc.message}"
        _notification_finish(notification, status=NotificationStatus.FAILED, error=error, duration_ms=duration)
        _channel_record_error(channel=channel, error=error, permanent=True)
        logger.warning("notification %s failed: %s", notification_id, error)
        return DeliveryOutcome("failed")

    _notification_finish(
        notification, status=NotificationStatus.SENT, error="", duration_ms=_elapsed_ms(started), sent=True
    )
    _channel_record_success(channel=channel)
    return DeliveryOutcome("sent")


def _notification_finish(
    notification: Notification,
    *,
    status: str,
    error: str,
    duration_ms: int | None = None,
    next_attempt_at: datetime | None = None,
    sent: bool = False,
) -> None:
    now = timezone.now()
    changes: dict[str, Any] = {
        "status": status,
        "error": error[:2000],
        "duration_ms": duration_ms,
        "claimed_until": None,
        "updated_at": now,
    }
    if next_attempt_at is not None:
        changes["next_attempt_at"] = next_attempt_at
    if sent:
        changes["sent_at"] = now
    # Only the claimant writes the outcome; a claim taken over after expiry wins.
    Notification.objects.filter(pk=notification.pk, status=NotificationStatus.SENDING).update(**changes)
    for name, value in changes.items():
        setattr(notification, name, value)


def notifications_due_claim(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Return deliveries whose task was lost (broker down, worker died), pushing their due time on.

    Pending deliveries are left alone until a minute past their due time, so the sweep does
    not race a task that is merely queued; the claim makes a duplicate harmless anyway.
    """
    now = now or timezone.now()
    due = Q(status=NotificationStatus.PENDING, next_attempt_at__lte=now - timedelta(minutes=1)) | Q(
        status=NotificationStatus.SENDING, claimed_until__lt=now
    )
    ids = list(Notification.objects.filter(due).order_by("next_attempt_at").values_list("pk", flat=True)[:limit])
    if ids:
        Notification.objects.filter(pk__in=ids, status=NotificationStatus.PENDING).update(
            next_attempt_at=now, updated_at=now
        )
    return ids


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

