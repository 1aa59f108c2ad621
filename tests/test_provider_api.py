"""The provider connection endpoint (admin keys; the key never comes back) and the reconciliation report."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from governance.audit import Actor
from governance.models import AuditEntry
from tests.factories import FeatureFactory
from tests.test_api_foundation import assert_error
from usage.models import NANO, UsageRollup
from usage.provider import services
from usage.provider.models import ConnectionStatus, ProviderConnection, ProviderUsageBucket

KEY = "sk-ant-admin01-abcdefghijklmnop-WXYZ"
URL = "/api/v1/provider-connection"


def put(client, body):
    return client.put(URL, body, format="json")


def test_put_creates_the_connection_and_never_returns_the_key(admin_api, tenant, feature):
    # when an admin key creates the connection with a mapping
    response = put(admin_api, {"admin_key": KEY, "feature_mapping": {"api_keys": {"apikey_1": "support-bot"}}})

    # then it is created, the key shows only masked, and it is encrypted at rest
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["admin_key"] == "…WXYZ"
    assert KEY not in response.content.decode()
    assert body["status"] == "pending"
    assert body["base_url"] == "https://api.anthropic.com"
    assert body["feature_mapping"] == {"api_keys": {"apikey_1": "support-bot"}, "workspaces": {}}
    from django.db import connection as db

    with db.cursor() as cursor:
        cursor.execute("SELECT admin_key FROM provider_providerconnection")
        (stored,) = cursor.fetchone()
    assert KEY not in stored
    assert ProviderConnection.objects.get(tenant=tenant).admin_key == KEY
    # and the audit trail has the masked key only
    entry = AuditEntry.objects.get(tenant=tenant, object_type="providerconnection")
    assert KEY not in json.dumps(entry.after) and entry.after["admin_key"] == "…WXYZ"


def test_get_shows_status_without_the_key(admin_api, tenant):
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)
    response = admin_api.get(URL)
    assert response.status_code == 200
    assert KEY not in response.content.decode()
    assert set(response.json()) >= {"admin_key", "status", "last_error", "usage_synced_until", "cost_synced_until"}


def test_put_without_key_keeps_it_and_updates_the_rest(admin_api, tenant):
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)
    response = put(admin_api, {"workspace_ids": ["wrkspc_1"], "enabled": False})
    assert response.status_code == 200, response.content
    connection = ProviderConnection.objects.get(tenant=tenant)
    assert connection.admin_key == KEY
    assert connection.workspace_ids == ["wrkspc_1"] and not connection.enabled


def test_create_needs_a_key(admin_api):
    error = assert_error(put(admin_api, {"workspace_ids": []}), 400, "invalid_request")
    assert "admin_key" in error["details"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"admin_key": "short"}, "admin_key"),
        ({"admin_key": "sk-ant admin key"}, "admin_key"),
        ({"admin_key": 12345678}, "admin_key"),
        ({"admin_key": KEY, "base_url": "http://169.254.169.254"}, "base_url"),
        ({"admin_key": KEY, "workspace_ids": "wrkspc_1"}, "workspace_ids"),
        ({"admin_key": KEY, "enabled": "maybe"}, "enabled"),
        ({"admin_key": KEY, "feature_mapping": {"keys": {}}}, "feature_mapping"),
        ({"admin_key": KEY, "feature_mapping": {"api_keys": ["x"]}}, "feature_mapping"),
        ({"admin_key": KEY, "feature_mapping": {"api_keys": {"apikey_1": "Not A Slug"}}}, "feature_mapping"),
    ],
)
def test_bad_input_is_400_naming_the_field(admin_api, body, field):
    error = assert_error(put(admin_api, body), 400, "invalid_request")
    assert field in error["details"]
    assert not ProviderConnection.objects.exists()


def test_non_object_body_is_400(admin_api):
    assert_error(admin_api.put(URL, "[1]", content_type="application/json"), 400, "invalid_request")
    assert_error(admin_api.put(URL, "{", content_type="application/json"), 400, "invalid_request")


def test_mapping_to_an_unknown_feature_is_400(admin_api, other_tenant):
    FeatureFactory(tenant=other_tenant, key="theirs")
    response = put(admin_api, {"admin_key": KEY, "feature_mapping": {"workspaces": {"wrkspc_1": "theirs"}}})
    error = assert_error(response, 400, "unknown_feature")
    assert error["details"] == {"feature_mapping": ["theirs"]}
    assert not ProviderConnection.objects.exists()


def test_delete_forgets_the_connection(admin_api, tenant):
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)
    assert admin_api.delete(URL).status_code == 204
    assert not ProviderConnection.objects.filter(tenant=tenant).exists()
    assert_error(admin_api.get(URL), 404, "not_found")
    assert AuditEntry.objects.filter(tenant=tenant, action="delete", object_type="providerconnection").exists()


def test_service_keys_cannot_manage_the_connection(api, tenant):
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)
    assert_error(api.get(URL), 403, "forbidden")
    assert_error(put(api, {"admin_key": KEY}), 403, "forbidden")
    assert_error(api.delete(URL), 403, "forbidden")


def test_unauthenticated_is_401(client, db):
    assert_error(client.get(URL), 401, "unauthenticated")
    assert_error(client.get("/api/v1/reconciliation"), 401, "unauthenticated")


def test_outsider_sees_only_its_own_missing_connection(outsider_api, tenant):
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)
    assert_error(outsider_api.get(URL), 404, "not_found")
    assert_error(outsider_api.delete(URL), 404, "not_found")
    assert ProviderConnection.objects.filter(tenant=tenant).exists()
    # and creating its own leaves ours alone
    assert put(outsider_api, {"admin_key": "sk-ant-admin01-other-1234"}).status_code == 201
    assert ProviderConnection.objects.get(tenant=tenant).admin_key == KEY


# --- reconciliation ------------------------------------------------------------------------------


DAY = date(2026, 11, 20)


def seed_drift(tenant, feature):
    connection = services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)
    connection.usage_synced_from = datetime(2026, 11, 1, tzinfo=UTC)
    connection.usage_synced_until = datetime(2026, 11, 24, tzinfo=UTC)
    connection.save()
    UsageRollup.objects.create(
        tenant=tenant, feature=feature, model="claude-haiku-4-5-20251001", family="haiku",
        service_tier="standard", day=DAY, calls=3, cost_nano=10 * NANO,
    )
    ProviderUsageBucket.objects.create(
        tenant=tenant, bucket_start=datetime(2026, 11, 20, 9, tzinfo=UTC), model="claude-haiku-4-5-20251001",
        canonical_model="claude-haiku-4-5-20251001", uncached_input_tokens=12_500_000, cost_nano=12_500_000_000,
        synced_at=datetime(2026, 11, 20, 10, tzinfo=UTC),
    )


def test_reconciliation_report(api, tenant, feature):
    seed_drift(tenant, feature)

    response = api.get("/api/v1/reconciliation?start=2026-11-19&end=2026-11-20")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["tolerance_pct"] == "5.00"
    assert body["connection_status"] == ConnectionStatus.PENDING
    assert [d["day"] for d in body["days"]] == ["2026-11-19", "2026-11-20"]
    day = body["days"][1]
    assert day["metered_usd"] == "10.000000"
    assert day["provider_usage_usd"] == "12.500000"
    assert day["provider_cost_usd"] is None
    assert day["unmetered_usd"] == "2.500000"
    assert Decimal(day["drift_pct"]) == Decimal("25")
    assert day["basis"] == "usage" and day["drifting"] is True
    assert day["models"] == [{
        "model": "claude-haiku-4-5-20251001", "metered_usd": "10.000000", "provider_usage_usd": "12.500000",
        "provider_cost_usd": None, "unpriced_tokens": 0,
    }]


def test_reconciliation_defaults_to_the_last_week(api, tenant):
    body = api.get("/api/v1/reconciliation").json()
    assert len(body["days"]) == 7
    assert body["connection_status"] is None
    assert all(d["provider_usage_usd"] is None and not d["drifting"] for d in body["days"])


@pytest.mark.parametrize(
    "query",
    ["start=yesterday", "end=2026-13-01", "start=2026-11-20&end=2026-11-19", "start=2026-01-01&end=2026-12-31",
     "bogus=1", "start=2026-11-20\x00"],
)
def test_reconciliation_bad_query_is_400(api, query):
    assert_error(api.get(f"/api/v1/reconciliation?{query}"), 400, "invalid_request")


def test_reconciliation_never_shows_another_tenant(outsider_api, tenant, feature):
    seed_drift(tenant, feature)
    body = outsider_api.get("/api/v1/reconciliation?start=2026-11-20&end=2026-11-20").json()
    assert body["days"][0]["metered_usd"] == "0.000000"
    assert body["days"][0]["provider_usage_usd"] is None
    assert body["days"][0]["models"] == []


def test_schema_documents_the_endpoints(admin_api):
    response = admin_api.get("/api/schema/?format=json")
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    assert set(paths["/api/v1/provider-connection"]) >= {"get", "put", "delete"}
    assert "get" in paths["/api/v1/reconciliation"]


def test_today_is_the_tenants_local_today(api, tenant):
    import time_machine

    tenant.timezone = "Pacific/Auckland"
    tenant.save()
    with time_machine.travel(datetime(2026, 11, 20, 12, tzinfo=UTC), tick=False):
        body = api.get("/api/v1/reconciliation").json()
    assert body["end"] == "2026-11-21"
    assert body["start"] == (date(2026, 11, 21) - timedelta(days=6)).isoformat()


# --- what a connection must look like, and the test button ------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"admin_key": "abcdefghijk"}, "admin_key", "looks like sk-ant-admin01-"),
        ({"admin_key": "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"}, "admin_key", "That is a regular API key"),
        ({"admin_key": KEY, "workspace_ids": ["<script>"]}, "workspace_ids", "is not an Anthropic workspace id"),
        ({"admin_key": KEY, "feature_mapping": {"workspaces": {"wrkspc_1 OR 1=1": "support-bot"}}},
         "feature_mapping", "is not an Anthropic workspace id"),
        ({"admin_key": KEY, "feature_mapping": {"api_keys": {"key-1": "support-bot"}}},
         "feature_mapping", "is not an Anthropic API key id"),
    ],
)
def test_keys_and_ids_that_cannot_be_anthropics_are_refused(admin_api, feature, body, field, message):
    error = assert_error(put(admin_api, body), 400, "invalid_request")
    assert message in json.dumps(error["details"][field], ensure_ascii=False)
    assert not ProviderConnection.objects.exists()


@pytest.fixture
def stub(httpserver, settings):
    from usage.provider.stub import StubReports, usage_row

    reports = StubReports()
    settings.ANTHROPIC_API_BASE_URL = reports.serve(httpserver)
    return reports, usage_row


def test_the_test_calls_the_admin_api_once_and_says_what_it_answered(admin_api, tenant, stub):
    # Given a connection with the stub's key, and one result in the last hour's bucket
    reports, usage_row = stub
    from django.utils import timezone

    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    reports.usage[hour] = [usage_row(uncached_input_tokens=100)]
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=reports.api_key)

    # When an admin tests it
    response = admin_api.post(f"{URL}/test")

    # Then Anthropic (the stub) was asked once, and the answer is shown
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ok"] is True and body["status"] == 200
    assert body["message"].startswith("Connected: Anthropic answered the usage report for ")
    assert body["message"].endswith("with 1 result row.")
    assert len(reports.requests) == 1
    assert ProviderConnection.objects.get(tenant=tenant).status == ConnectionStatus.PENDING  # sync untouched


def test_a_revoked_key_tests_as_refused_with_anthropics_words(admin_api, tenant, stub):
    reports, _ = stub
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key="sk-ant-admin01-revoked-9999")
    body = admin_api.post(f"{URL}/test").json()
    assert body["ok"] is False and body["status"] == 401
    assert "invalid x-api-key" in body["message"]
    assert len(reports.requests) == 1  # no retries


def test_testing_without_a_connection_is_404(admin_api):
    assert_error(admin_api.post(f"{URL}/test"), 404, "not_found")


def test_service_keys_cannot_test(api, tenant):
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)
    assert_error(api.post(f"{URL}/test"), 403, "forbidden")


def test_a_connection_with_only_the_gateways_key_tests_without_calling_anthropic(admin_api, tenant, stub):
    # Given a connection that holds only the gateway's API key
    reports, _ = stub
    services.provider_connection_save(
        tenant=tenant, actor=Actor.system(), inference_api_key="sk-ant-api03-abcdefghijklmnop"
    )

    # When an admin tests it
    body = admin_api.post(f"{URL}/test").json()

    # Then nothing is sent (an empty key would only earn a 401), and the answer says what is missing
    assert body == {"ok": False, "message": body["message"], "status": None, "duration_ms": 0}
    assert body["message"].startswith("No Admin API key is saved")
    assert reports.requests == []


# --- a feature-restricted key and the tenant-wide provider objects -------------------------------


@pytest.fixture
def restricted_admin(tenant, feature):
    from governance.models import KeyRole
    from governance.services import api_key_create
    from tests.conftest import make_client

    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="scoped admin", role=KeyRole.ADMIN,
                               features=[feature])
    return make_client(secret)


def test_a_feature_restricted_admin_key_cannot_touch_the_provider_connection(restricted_admin, tenant):
    # Given a connection the whole tenant's spend is synced with
    services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=KEY)

    # Then a key restricted to one feature may neither read, replace, test nor delete it
    for response in (
        restricted_admin.get(URL),
        put(restricted_admin, {"admin_key": "sk-ant-admin01-mine-abcdefgh"}),
        restricted_admin.post(f"{URL}/test"),
        restricted_admin.delete(URL),
    ):
        error = assert_error(response, 403, "forbidden")
        assert "restricted to some features" in error["message"]
    assert ProviderConnection.objects.get(tenant=tenant).admin_key == KEY


def test_a_feature_restricted_key_never_sees_the_organisations_days(restricted_admin, api, tenant, feature):
    # Given spend metered today, which the whole tenant's reconciliation shows
    day = date(2026, 11, 20)
    UsageRollup.objects.create(tenant=tenant, feature=feature, model="claude-sonnet-4-5-20250929",
                               family="sonnet", service_tier="standard", day=day, calls=1, cost_nano=NANO)
    query = {"start": day.isoformat(), "end": day.isoformat()}
    assert api.get("/api/v1/reconciliation", query).json()["days"][0]["metered_usd"] == "1.000000"

    # When a key restricted to one feature reads it, the organisation's days (every feature's spend) are
    # not in the answer; its features' rows are feature_days' business
    body = restricted_admin.get("/api/v1/reconciliation", query).json()
    assert body["days"] == []
    assert [d["day"] for d in body["feature_days"]] == ["2026-11-20"]
