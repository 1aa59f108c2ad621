"""Reads of alerting. Every selector takes its tenant."""

from __future__ import annotations

import uuid

from django.db.models import Prefetch, QuerySet

from governance.models import Tenant
from governance.notify.models import Alert, AlertChannel, Notification


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
