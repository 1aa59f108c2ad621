from __future__ import annotations

import factory

from governance.models import Feature, Tenant


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
