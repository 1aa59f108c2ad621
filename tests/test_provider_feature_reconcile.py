"""Reconciliation per feature: a feature's ledger against the usage and cost of its mapped keys and workspaces.

Figures by hand, Claude Haiku 4.5 at $1 / MTok in and $5 / MTok out:
1,000,000 in + 200,000 out = $2.00; 1,000,000 in + 300,000 out = $2.50;
500,000 in + 100,000 out = $1.00; 1,000,000 out = $5.00.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from budgets.services import usage_report
from governance.audit import Actor
from governance.models import KeyRole
from governance.notify.models import Alert
from governance.services import api_key_create
from tests.conftest import make_client
from tests.factories import FeatureFactory, TenantFactory
from usage.models import NANO
from usage.pricing import TokenUsage
from usage.provider import selectors, services
from usage.provider.models import FeatureReconciliation, ProviderFeatureMapping, ProviderUsageBucket
from usage.provider.stub import StubReports, cost_row, usage_row
from usage.services import UsageInput

DAY = date(2026, 11, 20)
START = datetime(2026, 11, 20, tzinfo=UTC)
HAIKU = "claude-haiku-4-5-20251001"
MAPPING = {"api_keys": {"apikey_support": "support-bot"}, "workspaces": {"wrkspc_search": "search"}}


@pytest.fixture
def stub(httpserver, settings):
    reports = StubReports()
    settings.ANTHROPIC_API_BASE_URL = reports.serve(httpserver)
    return reports


@pytest.fixture
def search(tenant):
    return FeatureFactory(tenant=tenant, key="search", name="Search", default_model=HAIKU)


def ledger(feature, *, input_tokens: int, output_tokens: int, at: datetime = START + timedelta(hours=9),
           n: int = 0) -> None:
    """Record one call of the feature through the ledger's own path (events and rollups)."""
    usage_report(tenant=feature.tenant, api_key=None, items=[UsageInput(
        feature=feature, model=HAIKU, usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
        occurred_at=at, request_id=f"req-{feature.key}-{n}-{at:%Y%m%d%H}",
    )])


def connect(tenant, stub, mapping=MAPPING):
    return services.provider_connection_save(
        tenant=tenant, actor=Actor.system(), admin_key=stub.api_key, feature_mapping=mapping
    )


def sync(connection):
    end = START + timedelta(days=1)
    assert services.provider_usage_sync(connection=connection, start=START, end=end).ok
    assert services.provider_cost_sync(connection=connection, start=START, end=end).ok


def feature_alerts(tenant):
    return list(Alert.objects.filter(tenant=tenant, kind="drift", dedup_key__contains=":feature:"))


def lines(tenant, day=DAY):
    (feature_day,) = selectors.feature_reconciliation_compute(tenant=tenant, start=day, end=day)
    return feature_day, {line.feature_key: line for line in feature_day.features}


def matching_day(stub, *, support_out: int = 200_000) -> None:
    """The usage report: support-bot's key, search's workspace (any key), and Console use nobody mapped."""
    stub.usage[START + timedelta(hours=9)] = [
        usage_row(model=HAIKU, uncached_input_tokens=1_000_000, output_tokens=support_out,
                  api_key_id="apikey_support", workspace_id="wrkspc_other"),
        usage_row(model=HAIKU, uncached_input_tokens=500_000, output_tokens=100_000,
                  api_key_id="apikey_searchsvc", workspace_id="wrkspc_search"),
        usage_row(model=HAIKU, output_tokens=1_000_000),
    ]
    stub.cost[START] = [
        cost_row(amount="100", model=HAIKU, workspace_id="wrkspc_search"),
        cost_row(amount="200", model=HAIKU, workspace_id="wrkspc_other"),
        cost_row(amount="500", model=HAIKU, workspace_id=None),
    ]


def test_mapped_features_that_match_their_ledger_raise_no_alert(tenant, feature, search, stub):
    # given support-bot metered $2.00 and search $1.00, and Anthropic reports the same for their ids
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000)
    matching_day(stub)
    sync(connect(tenant, stub))

    # when reconciliation runs
    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    # then both features are ok, and the Console's $5.00 stays unattributed
    day, by_key = lines(tenant)
    assert day.unattributed_usage_nano == 5 * NANO
    support, found = by_key["support-bot"], by_key["search"]
    assert (support.metered_nano, support.provider_usage_nano, support.status) == (2 * NANO, 2 * NANO, "ok")
    # an API key has no line in the cost report: support-bot's bill cannot be told apart
    assert support.provider_cost_nano is None and support.bill_diff_nano is None
    assert (found.metered_nano, found.provider_usage_nano, found.provider_cost_nano, found.bill_metered_nano) == (
        NANO, NANO, NANO, NANO
    )
    assert found.status == "ok" and found.mapped_ids == ["wrkspc_search"]
    assert feature_alerts(tenant) == []
    stored = {r.feature.key: r for r in FeatureReconciliation.objects.filter(tenant=tenant, day=DAY)}
    assert (stored["support-bot"].metered_nano, stored["support-bot"].provider_usage_nano,
            stored["support-bot"].provider_cost_nano) == (2 * NANO, 2 * NANO, None)
    assert (stored["search"].provider_cost_nano, stored["search"].bill_metered_nano) == (NANO, NANO)
    # the tenant-level figure still holds all of Anthropic's usage: $2 + $1 + $5 = $8 against $3 metered
    (tenant_day,) = selectors.reconciliation_compute(tenant=tenant, start=DAY, end=DAY)
    assert (tenant_day.provider_usage_nano, tenant_day.metered_nano) == (8 * NANO, 3 * NANO)


def test_a_feature_whose_key_reports_more_raises_one_alert_naming_it(tenant, feature, search, stub):
    # given support-bot metered $2.00 but its API key shows $2.50 in the usage report (25% over, tolerance 5%)
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000)
    matching_day(stub, support_out=300_000)
    connection = connect(tenant, stub)
    sync(connection)

    # when reconciliation runs, then the sync and reconciliation run again (the beat is hourly)
    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)
    sync(connection)
    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    # then exactly one feature alert, naming support-bot and the provider as the higher side
    (alert,) = feature_alerts(tenant)
    assert alert.dedup_key == f"drift:{tenant.pk}:2026-11-20:feature:{feature.pk}"
    assert alert.title == f"Anthropic reports more for {feature.name} than the ledger on 2026-11-20"
    assert "For feature support-bot on 2026-11-20 (UTC)" in alert.body
    assert "the provider is $0.500000 higher (25.00%, tolerance 5.00%)" in alert.body
    assert alert.data == {
        "day": "2026-11-20", "feature": "support-bot", "report": "usage_report", "diverged": "provider",
        "provider_usd": "2.500000", "ledger_usd": "2.000000", "difference_usd": "0.500000",
        "drift_pct": "25.00", "mapped_ids": ["apikey_support"],
    }
    _, by_key = lines(tenant)
    assert by_key["support-bot"].status == "provider_higher" and by_key["search"].status == "ok"
    row = FeatureReconciliation.objects.get(tenant=tenant, day=DAY, feature=feature)
    assert (row.metered_nano, row.provider_usage_nano) == (2 * NANO, 2_500_000_000)
    assert FeatureReconciliation.objects.filter(tenant=tenant).count() == 2  # re-runs update, never add


def test_a_feature_metering_more_than_its_ids_report_names_the_ledger(tenant, feature, search, stub):
    # given search metered $2.00 ($1.00 twice) while its workspace shows $1.00: it also calls through an unmapped id
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000, n=1)
    matching_day(stub)
    sync(connect(tenant, stub))

    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    # then the usage check drifts by -50% (the ledger higher), and so does the bill ($1.00 vs $2.00)
    _, by_key = lines(tenant)
    assert (by_key["search"].usage_diff_nano, by_key["search"].usage_drift_pct) == (-NANO, Decimal("-50.00"))
    assert by_key["search"].status == "ledger_higher"
    (alert,) = feature_alerts(tenant)
    assert alert.title == "The ledger has more for Search than Anthropic reports on 2026-11-20"
    assert alert.data["diverged"] == "ledger" and alert.data["report"] == "usage_report"
    assert "the ledger is $1.000000 higher (-50.00%" in alert.body and "not mapped to it" in alert.body


def test_a_workspaces_bill_above_the_ledger_alerts_naming_the_cost_report(tenant, feature, search, stub):
    # given search's usage report agrees with its $1.00 ledger, but its workspace is billed $1.50
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000)
    matching_day(stub)
    stub.cost[START][0] = cost_row(amount="150", model=HAIKU, workspace_id="wrkspc_search")
    sync(connect(tenant, stub))

    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    _, by_key = lines(tenant)
    found = by_key["search"]
    assert not found.usage_drifting and found.bill_drifting
    assert (found.bill_diff_nano, found.bill_drift_pct, found.status) == (NANO // 2, Decimal("50.00"),
                                                                          "provider_higher")
    (alert,) = feature_alerts(tenant)
    assert alert.data["report"] == "cost_report" and alert.data["provider_usd"] == "1.500000"
    assert "Anthropic's cost report shows $1.500000 and the ledger $1.000000" in alert.body


def test_a_workspace_shared_with_another_features_key_has_no_bill_of_its_own(tenant, feature, search, stub):
    # given support-bot's API key is used inside search's workspace
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000)
    stub.usage[START + timedelta(hours=9)] = [
        usage_row(model=HAIKU, uncached_input_tokens=1_000_000, output_tokens=200_000,
                  api_key_id="apikey_support", workspace_id="wrkspc_search"),
        usage_row(model=HAIKU, uncached_input_tokens=500_000, output_tokens=100_000, workspace_id="wrkspc_search"),
    ]
    stub.cost[START] = [cost_row(amount="300", model=HAIKU, workspace_id="wrkspc_search")]
    sync(connect(tenant, stub))

    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    # then the workspace's $3.00 bill is not search's: no bill comparison, no false drift
    _, by_key = lines(tenant)
    assert by_key["search"].provider_usage_nano == NANO and by_key["search"].provider_cost_nano is None
    assert by_key["search"].status == by_key["support-bot"].status == "ok"
    assert feature_alerts(tenant) == []


def test_a_day_not_yet_over_is_open_and_never_alerts(tenant, feature, search, stub):
    # given an hour into the next UTC day, support-bot's key shows $2.50 against $2.00 metered
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    matching_day(stub, support_out=300_000)
    with time_machine.travel(START + timedelta(days=1, hours=1)):
        sync(connect(tenant, stub))
        services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)
        _, by_key = lines(tenant)

    # then the figures show, but the day is open (its last minutes may still arrive) and nothing alerts
    assert by_key["support-bot"].provider_usage_nano == 2_500_000_000
    assert by_key["support-bot"].status == "open" and not by_key["support-bot"].drifting
    assert feature_alerts(tenant) == []


def test_utc_days_for_a_tenant_elsewhere(db, stub):
    # given a Tokyo tenant: a call at 20:00 UTC on the 20th is the 21st there, but the 20th in the reports
    tokyo = TenantFactory(slug="tokyo", timezone="Asia/Tokyo")
    bot = FeatureFactory(tenant=tokyo, key="support-bot", default_model=HAIKU)
    ledger(bot, input_tokens=1_000_000, output_tokens=200_000, at=START + timedelta(hours=20))
    stub.usage[START + timedelta(hours=20)] = [
        usage_row(model=HAIKU, uncached_input_tokens=1_000_000, output_tokens=200_000, api_key_id="apikey_support")
    ]
    sync(connect(tokyo, stub, {"api_keys": {"apikey_support": "support-bot"}}))

    (line,) = selectors.feature_reconciliation_compute(tenant=tokyo, start=DAY, end=DAY)[0].features

    assert (line.metered_nano, line.provider_usage_nano, line.status) == (2 * NANO, 2 * NANO, "ok")


# --- tenant isolation -----------------------------------------------------------------------------


def test_another_tenants_mapping_feature_and_buckets_never_count(tenant, other_tenant, feature, stub):
    # given Globex maps the same API key id to its own feature, and its stub reports $2.50 for it
    theirs = FeatureFactory(tenant=other_tenant, key="theirs", default_model=HAIKU)
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    matching_day(stub, support_out=300_000)
    sync(connect(other_tenant, stub, {"api_keys": {"apikey_support": "theirs"}}))
    # and Acme's connection has a mapping row naming Globex's feature (as Django admin could write)
    connection = connect(tenant, stub, {})
    ProviderFeatureMapping.objects.create(connection=connection, kind="workspace", provider_id="wrkspc_search",
                                          feature=theirs)

    # when Acme syncs the same reports and reconciles
    sync(connection)
    services.reconciliation_run(tenant=tenant, start=DAY, end=DAY)

    # then the row naming Globex's feature is ignored: all of Acme's $8.50 is unattributed, nothing alerts
    day, by_key = lines(tenant)
    assert by_key == {} and day.unattributed_usage_nano == 8_500_000_000
    assert not ProviderUsageBucket.objects.filter(tenant=tenant, feature__isnull=False).exists()
    # and Globex's own line is Globex's alone
    (their_line,) = lines(other_tenant)[1].values()
    assert (their_line.feature_key, their_line.provider_usage_nano, their_line.metered_nano) == (
        "theirs", 2_500_000_000, 0
    )
    assert selectors.connection_mapping(connection=connection) == {"api_keys": {}, "workspaces": {}}
    assert not FeatureReconciliation.objects.filter(tenant=tenant).exists()
    assert feature_alerts(tenant) == []
    # and a mapping to Globex's feature by key is refused
    with pytest.raises(services.UnknownFeatures):
        services.provider_mapping_save(connection=connection, actor=Actor.system(),
                                       feature_mapping={"api_keys": {"apikey_support": "theirs"}})


# --- the API --------------------------------------------------------------------------------------


def test_the_reconciliation_api_shows_feature_rows_beside_the_tenant_rows(tenant, feature, search, stub,
                                                                          admin_api, outsider_api):
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000)
    matching_day(stub, support_out=300_000)
    sync(connect(tenant, stub))

    body = admin_api.get("/api/v1/reconciliation", {"start": "2026-11-20", "end": "2026-11-20"}).json()

    assert [d["day"] for d in body["days"]] == ["2026-11-20"]
    (feature_day,) = body["feature_days"]
    assert feature_day["day"] == "2026-11-20" and feature_day["unattributed_usage_usd"] == "5.000000"
    found, support = feature_day["features"]
    assert support == {
        "feature": "support-bot", "feature_name": feature.name, "mapped_ids": ["apikey_support"],
        "metered_usd": "2.000000", "provider_usage_usd": "2.500000", "unpriced_tokens": 0,
        "usage_difference_usd": "0.500000", "usage_drift_pct": "25.00", "usage_drifting": True,
        "provider_cost_usd": None, "bill_ledger_usd": None, "bill_difference_usd": None, "bill_drift_pct": None,
        "bill_drifting": False, "complete": True, "drifting": True, "status": "provider_higher",
    }
    assert (found["feature"], found["provider_cost_usd"], found["bill_difference_usd"], found["status"]) == (
        "search", "1.000000", "0.000000", "ok"
    )
    # one feature's rows
    only = admin_api.get("/api/v1/reconciliation", {"start": "2026-11-20", "end": "2026-11-20", "feature": "search"})
    assert [f["feature"] for f in only.json()["feature_days"][0]["features"]] == ["search"]
    # another tenant sees none of it
    theirs = outsider_api.get("/api/v1/reconciliation", {"start": "2026-11-20", "end": "2026-11-20"}).json()
    assert theirs["feature_days"] == [{"day": "2026-11-20", "unattributed_usage_usd": None, "features": []}]


def test_the_api_refuses_another_tenants_feature_and_limits_restricted_keys(tenant, other_tenant, feature,
                                                                            search, stub):
    FeatureFactory(tenant=other_tenant, key="theirs")
    sync(connect(tenant, stub))
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="search only", role=KeyRole.SERVICE,
                               features=[search])
    restricted = make_client(secret)
    query = {"start": "2026-11-20", "end": "2026-11-20"}

    # another tenant's feature key is a feature this tenant does not have
    response = restricted.get("/api/v1/reconciliation", {**query, "feature": "theirs"})
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "unknown_feature", "message": "No feature 'theirs'.",
                                        "details": {"feature": "theirs"}}
    # a key restricted to search sees only search's rows, and may not ask for support-bot's
    rows = restricted.get("/api/v1/reconciliation", query).json()["feature_days"][0]["features"]
    assert [r["feature"] for r in rows] == ["search"]
    forbidden = restricted.get("/api/v1/reconciliation", {**query, "feature": "support-bot"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"


# --- the provider page ----------------------------------------------------------------------------


# The page offers the last two weeks, and bills settle two days after the day starts: read it then,
# not on whatever date the suite happens to run.
@time_machine.travel(START + timedelta(days=2, hours=3), tick=False)
def test_the_provider_page_shows_a_days_features_and_admins_map_ids(client, tenant, other_tenant, feature, search,
                                                                    stub):
    from governance.models import Role
    from tests.test_web_pages import member

    # given a synced day where support-bot's key shows $2.50 against $2.00 metered
    ledger(feature, input_tokens=1_000_000, output_tokens=200_000)
    ledger(search, input_tokens=500_000, output_tokens=100_000)
    matching_day(stub, support_out=300_000)
    connection = connect(tenant, stub)
    sync(connection)
    FeatureFactory(tenant=other_tenant, key="theirs")

    # when a viewer opens the provider page for that day
    client.force_login(member(tenant, Role.VIEWER))
    page = client.get("/t/acme/provider/", {"day": "2026-11-20"}).content.decode()

    # then each mapped feature has its row: Anthropic, billed, ledger, difference, status
    table = page.split('id="feature-reconciliation"')[1].split("</table>")[0]
    support_row = table.split("support-bot")[1].split("</tr>")[0]
    assert "$2.50" in support_row and "$2.00" in support_row and "+$0.50" in support_row
    assert "(25.00%)" in support_row and "Anthropic higher" in support_row
    search_row = table.split(">search<")[1].split("</tr>")[0]
    assert search_row.count("$1.00") == 3 and "$0.00 vs ledger" in search_row and "Matches" in search_row
    assert "$5.00 of Anthropic's usage report that day is not mapped to a feature" in page
    # a viewer sees the mapping but cannot change it
    assert "apikey_support" in page and "Owners and admins change the mapping." in page
    assert client.post("/t/acme/provider/mapping/", {"mapping": ""}).status_code == 403
    # a day that is not a date shows yesterday, never an error
    assert client.get("/t/acme/provider/", {"day": "2026-13-45<x>"}).status_code == 200

    # when an admin maps an id to another tenant's feature, or a malformed id, the form says why
    client.force_login(member(tenant, Role.ADMIN))
    bad = client.post("/t/acme/provider/mapping/", {"mapping": "apikey_support = theirs"}).content.decode()
    assert "Line 1: no feature “theirs”." in bad
    bad = client.post("/t/acme/provider/mapping/", {"mapping": "apikey_1;DROP = search"}).content.decode()
    assert "Line 1: ids are apikey_… or wrkspc_… followed by letters and digits." in bad
    assert selectors.connection_mapping(connection=connection) == MAPPING

    # and a valid mapping replaces the old one, re-attributing stored usage at once
    response = client.post("/t/acme/provider/mapping/", {"mapping": "wrkspc_other = support-bot"})
    assert response.status_code == 302 and response["Location"].endswith("/t/acme/provider/#features")
    assert selectors.connection_mapping(connection=connection) == {
        "api_keys": {}, "workspaces": {"wrkspc_other": "support-bot"}
    }
    _, by_key = lines(tenant)
    assert list(by_key) == ["support-bot"] and by_key["support-bot"].provider_usage_nano == 2_500_000_000
    # owners of another tenant get a 404, exactly like a missing tenant
    client.force_login(member(other_tenant, Role.OWNER))
    assert client.get("/t/acme/provider/").status_code == 404
    assert client.post("/t/acme/provider/mapping/", {"mapping": "apikey_x = theirs"}).status_code == 404
