"""Reconciliation: metered spend (the ledger's rollups) against what Anthropic reports."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from governance.audit import Actor
from governance.notify.models import Alert
from tests.factories import TenantFactory
from usage.models import NANO, UsageRollup
from usage.provider import services
from usage.provider.models import Reconciliation
from usage.provider.stub import StubReports, cost_row, usage_row

DAY = date(2026, 11, 20)
START = datetime(2026, 11, 20, tzinfo=UTC)
HAIKU = "claude-haiku-4-5-20251001"


@pytest.fixture
def stub(httpserver, settings):
    reports = StubReports()
    settings.ANTHROPIC_API_BASE_URL = reports.serve(httpserver)
    return reports


def metered(tenant, feature, usd: str, *, day: date = DAY, model: str = HAIKU) -> None:
    UsageRollup.objects.create(
        tenant=tenant, feature=feature, model=model, family="haiku", service_tier="standard", day=day,
        calls=1, cost_nano=int(Decimal(usd) * NANO),
    )


def provider_says_12_50(stub) -> None:
    # Haiku 4.5: 2.5 MTok in at $1 + 2 MTok out at $5 = $12.50; the bill says 1250 cents.
    stub.usage[START + timedelta(hours=9)] = [
        usage_row(model=HAIKU, uncached_input_tokens=2_500_000, output_tokens=2_000_000)
    ]
    stub.cost[START] = [cost_row(amount="1250", model=HAIKU, description="Claude Haiku 4.5 Usage")]


def synced(tenant, stub):
    connection = services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=stub.api_key)
    end = START + timedelta(days=1)
    assert services.provider_usage_sync(connection=connection, start=START, end=end).ok
    assert services.provider_cost_sync(connection=connection, start=START, end=end).ok
    return connection


def test_ledger_10_provider_12_50_is_25_percent_drift_and_one_alert(tenant, feature, stub):
    # given the ledger metered $10.00 on the day and Anthropic reports $12.50
    metered(tenant, feature, "10.00")
    provider_says_12_50(stub)
    synced(tenant, stub)

    # when reconciliation runs (twice: the beat is hourly)
    days = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)
    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    # then 25% drift is reported and exactly one drift alert is raised
    (day,) = days
    assert day.metered_nano == 10 * NANO
    assert day.provider_usage_nano == day.provider_cost_nano == 12_500_000_000
    assert day.unmetered_nano == 2_500_000_000
    assert day.drift_pct == Decimal("25.00")
    assert day.drifting
    # one alert for each report that diverged: the usage report (unmetered calls) and the bill
    alerts = list(Alert.objects.filter(tenant=tenant).order_by("dedup_key"))
    assert [(a.kind, a.dedup_key) for a in alerts] == [
        ("drift", f"drift:{tenant.pk}:2026-11-20"), ("drift", f"drift:{tenant.pk}:2026-11-20:cost_report"),
    ]
    assert "usage report" in alerts[0].body and "$2.500000 unmetered (25.00%" in alerts[0].body
    assert "cost report bills $12.500000" in alerts[1].body and "$2.500000 more" in alerts[1].body
    row = Reconciliation.objects.get(tenant=tenant, day=DAY, model=HAIKU)
    assert (row.metered_nano, row.provider_usage_nano, row.provider_cost_nano) == (
        10 * NANO, 12_500_000_000, 12_500_000_000
    )


def test_drift_within_tolerance_raises_nothing(tenant, feature, stub):
    metered(tenant, feature, "12.00")  # $0.50 unmetered of $12.00 is 4.17%
    provider_says_12_50(stub)
    synced(tenant, stub)

    (day,) = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    assert day.drift_pct == Decimal("4.17")
    assert not day.drifting
    assert not Alert.objects.exists()


def test_tenant_tolerance_is_respected(tenant, feature, stub):
    tenant.drift_tolerance_pct = Decimal("30")
    tenant.save()
    metered(tenant, feature, "10.00")
    provider_says_12_50(stub)
    synced(tenant, stub)

    (day,) = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    assert day.drift_pct == Decimal("25.00") and not day.drifting
    assert not Alert.objects.exists()


def test_spend_with_nothing_metered_is_all_unmetered(tenant, stub):
    provider_says_12_50(stub)
    synced(tenant, stub)

    (day,) = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    assert day.metered_nano == 0 and day.drift_pct is None and day.drifting
    assert Alert.objects.filter(tenant=tenant, kind="drift").count() == 2  # usage report and cost report


def test_days_the_sync_never_read_have_no_provider_figures(tenant, feature, stub):
    metered(tenant, feature, "3.00", day=DAY - timedelta(days=3))
    synced(tenant, stub)

    days = services.reconciliation_run(tenant=tenant, start=DAY - timedelta(days=3), end=DAY)

    assert days[0].provider_usage_nano is None and days[0].basis is None and not days[0].drifting
    assert days[-1].provider_usage_nano == 0 and days[-1].basis == "usage"
    assert not Alert.objects.exists()


def test_ledger_aliases_and_provider_ids_meet_on_the_canonical_model(tenant, feature, stub):
    metered(tenant, feature, "12.50", model=HAIKU)
    stub.usage[START] = [usage_row(model="claude-haiku-4-5", uncached_input_tokens=12_500_000)]
    synced(tenant, stub)

    (day,) = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    assert [(m.model, m.metered_nano, m.provider_usage_nano) for m in day.models] == [
        (HAIKU, 12_500_000_000, 12_500_000_000)
    ]
    assert day.drift_pct == Decimal("0.00")


def test_tenant_local_days(stub, feature):
    # given a tenant in Tokyo (UTC+9): 20:00 UTC on the 20th is the 21st there
    tokyo = TenantFactory(slug="tokyo", timezone="Asia/Tokyo")
    connection = services.provider_connection_save(tenant=tokyo, actor=Actor.system(), admin_key=stub.api_key)
    stub.usage[START + timedelta(hours=20)] = [usage_row(model=HAIKU, output_tokens=1_000_000)]
    assert services.provider_usage_sync(
        connection=connection, start=START - timedelta(days=1), end=START + timedelta(days=2)
    ).ok

    days = {d.day: d for d in services.reconciliation_run(tenant=tokyo, start=DAY, end=DAY + timedelta(days=1))}

    assert days[DAY].provider_usage_nano == 0
    assert days[DAY + timedelta(days=1)].provider_usage_nano == 5 * NANO


def test_other_tenants_buckets_never_count(tenant, other_tenant, feature, stub):
    provider_says_12_50(stub)
    synced(other_tenant, stub)
    metered(tenant, feature, "1.00")

    (day,) = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    assert day.provider_usage_nano is None
    assert not Alert.objects.filter(tenant=tenant).exists()


def test_beat_task_reconciles_recent_days(tenant, feature, stub):
    import time_machine

    from usage.provider import tasks

    metered(tenant, feature, "10.00")
    provider_says_12_50(stub)
    synced(tenant, stub)

    with time_machine.travel(datetime(2026, 11, 21, 3, tzinfo=UTC), tick=False):
        tasks.reconcile_all.delay()

    assert Reconciliation.objects.filter(tenant=tenant, day=DAY).exists()
    assert Alert.objects.filter(tenant=tenant, kind="drift").count() == 1


def test_40_dollars_of_an_unpriced_model_alerts_within_one_sync(tenant, stub):
    # given Anthropic bills $40 (4000 cents) and reports tokens of a model the catalog does not price
    stub.usage[START + timedelta(hours=3)] = [usage_row(model="claude-zeta-9", uncached_input_tokens=2_000_000)]
    stub.cost[START] = [cost_row(amount="4000", model="claude-zeta-9", description="Claude Zeta 9 Usage")]
    connection = services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=stub.api_key)

    # when one cost sync runs
    assert services.provider_cost_sync(connection=connection, start=START, end=START + timedelta(days=1)).ok

    # then the unpriced model is alerted at once, naming it and the amount billed
    (alert,) = Alert.objects.filter(tenant=tenant, kind="unpriced_usage")
    assert "claude-zeta-9" in alert.title and "$40.000000 in the cost report" in alert.body
    # and the usage sync of the same model and day does not alert twice
    assert services.provider_usage_sync(connection=connection, start=START, end=START + timedelta(days=1)).ok
    assert Alert.objects.filter(tenant=tenant, kind="unpriced_usage").count() == 1


def test_a_bill_above_the_catalog_price_alerts_naming_the_cost_report(tenant, feature, stub):
    # given the ledger and the usage report agree on $12.50 but the bill says $14.00 (a price we have wrong)
    metered(tenant, feature, "12.50")
    provider_says_12_50(stub)
    stub.cost[START] = [cost_row(amount="1400", model=HAIKU, description="Claude Haiku 4.5 Usage")]
    synced(tenant, stub)

    # when reconciliation runs
    (day,) = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    # then only the cost report drifts: 12% over the ledger, beyond the 5% tolerance
    assert not day.usage_drifting and day.bill_drifting
    assert (day.bill_diff_nano, day.bill_drift_pct) == (1_500_000_000, Decimal("12.00"))
    (alert,) = Alert.objects.filter(tenant=tenant, kind="drift")
    assert alert.dedup_key.endswith(":cost_report") and alert.data["report"] == "cost_report"
    assert "cost report bills $14.000000" in alert.body and "a price in the catalog differs" in alert.body


def test_cost_rows_that_differ_only_by_region_are_kept_apart(tenant, stub):
    stub.cost[START] = [
        {**cost_row(amount="500", model=HAIKU), "inference_geo": "global"},
        {**cost_row(amount="1000", model=HAIKU), "inference_geo": "us"},
    ]
    synced(tenant, stub)
    (day,) = services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)
    assert day.provider_cost_nano == 15 * NANO  # $5 + $10, not $5
