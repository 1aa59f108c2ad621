"""Reads of alerting. Every selector takes its tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Prefetch, Q, QuerySet

from governance.models import Tenant
from governance.notify.models import (
    Alert,
    AlertChannel,
    ChannelHealth,
    Notification,
    NotificationStatus,
)


def channel_list(*, tenant: Tenant) -> QuerySet[AlertChannel]:
    return AlertChannel.objects.filter(tenant=tenant)


def channel_get(*, tenant: Tenant, channel_id: uuid.UUID) -> AlertChannel | None:
    return channel_list(tenant=tenant).filter(pk=channel_id).first()


def alert_list(
    *, tenant: Tenant, kind: str | None = None, budget_id: uuid.UUID | None = None
) -> QuerySet[Alert]:
    """Return the tenant's alerts, newest first, with their deliveries."""
    alerts = (
        Alert.objects.filter(tenant=tenant)
        .select_related("budget")
        .prefetch_related(
            Prefetch("notifications", queryset=Notification.objects.select_related("channel").order_by("id"))
        )
        .order_by("-created_at", "-pk")
    )
    if kind:
        alerts = alerts.filter(kind=kind)
    if budget_id is not None:
        alerts = alerts.filter(budget_id=budget_id)
    return alerts


@dataclass(frozen=True)
class ChannelStatus:
    """What a channel's deliveries say about it, for people."""

    channel: AlertChannel
    health: str  # ChannelHealth
    since: datetime | None  # failing since, or last delivered
    last_error: str
    waiting: int  # deliveries not yet through (pending, being sent)
    failed: int  # deliveries given up on

    @property
    def label(self) -> str:
        return ChannelHealth(self.health).label


def channel_statuses(*, tenant: Tenant, failing_only: bool = False) -> list[ChannelStatus]:
    """Return each channel's health with its waiting and failed deliveries (one query)."""
    channels = channel_list(tenant=tenant).annotate(
        waiting=Count("notifications", filter=Q(
            notifications__status__in=[NotificationStatus.PENDING, NotificationStatus.SENDING])),
        given_up=Count("notifications", filter=Q(notifications__status=NotificationStatus.FAILED)),
    )
    statuses = []
    for channel in channels:
        health = channel.health
        if failing_only and health != ChannelHealth.FAILING:
            continue
        since = channel.failing_since or channel.last_error_at if health == ChannelHealth.FAILING else (
            channel.last_delivered_at
        )
        statuses.append(ChannelStatus(channel, health, since, channel.last_error, channel.waiting, channel.given_up))
    return statuses
