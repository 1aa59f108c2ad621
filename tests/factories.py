from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import factory

from governance.models import Feature, Tenant
from usage.models import UsageEvent


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda t: t.slug.title())
    timezone = "UTC"


class FeatureFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Feature

    tenant = factory.SubFactory(TenantFactory)
    key = factory.Sequence(lambda n: f"feature-{n}")
    name = factory.LazyAttribute(lambda f: f.key.replace("-", " ").title())
    default_model = "claude-sonnet-4-5"


class BudgetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "budgets.Budget"

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Budget {n}")
    scope = "tenant"
    period = "month"
    enforcement = "block"
    limit_nano = 100 * 1_000_000_000


def ledger_history(feature, *, first: date, last: date, calls_in: Callable[[datetime], list[int]]) -> int:
    """Write the ledger's calls hour by hour from ``first`` to ``last`` (UTC days); return their cost.

    ``calls_in(hour)`` gives the cost of each call in that hour, spread over its minutes.
    """
    events = []
    at = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    while at < end:
        costs = calls_in(at)
        for n, cost in enumerate(costs):
            events.append(UsageEvent(
                tenant=feature.tenant, feature=feature, model="claude-sonnet-4-5-20250929", family="sonnet",
                input_tokens=1000, output_tokens=100, cost_nano=cost, source="report",
                occurred_at=at + timedelta(seconds=3600 * n // len(costs)),
            ))
        at += timedelta(hours=1)
    UsageEvent.objects.bulk_create(events, batch_size=2000)
    return sum(e.cost_nano for e in events)
