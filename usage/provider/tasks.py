"""Thin Celery tasks for the provider sync: beat fans out one task per connection or tenant."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from governance.models import Tenant
from usage.provider import selectors, services
from usage.provider.models import ProviderConnection


def _connection(connection_id: str) -> ProviderConnection | None:
    return ProviderConnection.objects.select_related("tenant").filter(pk=connection_id, enabled=True).first()


@shared_task(ignore_result=True)
def sync_usage_all() -> None:
    """Beat, every 5 minutes: sync the usage report of every connection that is due."""
    for connection_id in selectors.connection_ids_due(now=timezone.now()):
        sync_usage.delay(str(connection_id))


@shared_task(ignore_result=True)
def sync_usage(connection_id: str) -> None:
    connection = _connection(connection_id)
    if connection is not None:
        services.provider_usage_sync(connection=connection)


@shared_task(ignore_result=True)
def sync_cost_all() -> None:
    """Beat, hourly: sync the cost report of every connection that is due."""
    for connection_id in selectors.connection_ids_due(now=timezone.now()):
        sync_cost.delay(str(connection_id))


@shared_task(ignore_result=True)
def sync_cost(connection_id: str) -> None:
    connection = _connection(connection_id)
    if connection is not None:
        services.provider_cost_sync(connection=connection)


@shared_task(ignore_result=True)
def reconcile_all() -> None:
    """Beat, hourly: reconcile the recent days of every tenant with a provider connection."""
    for tenant_id in selectors.tenant_ids_to_reconcile():
        reconcile.delay(tenant_id)


@shared_task(ignore_result=True)
def reconcile(tenant_id: int) -> None:
    tenant = Tenant.objects.filter(pk=tenant_id, active=True).first()
    if tenant is not None:
        services.reconciliation_run_recent(tenant=tenant)
