"""A feature-restricted admin key cannot make or revoke a key broader than itself, nor manage the tenant's alerts."""

from __future__ import annotations

import pytest

from governance.audit import Actor
from governance.models import ApiKey, KeyRole
from governance.services import api_key_create
from tests.conftest import make_client
from tests.factories import FeatureFactory
from tests.test_api_foundation import assert_error


@pytest.fixture
def classifier(tenant):
    return FeatureFactory(tenant=tenant, key="classifier")


@pytest.fixture
def restricted_admin(tenant, feature, classifier):
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="bot admin", role=KeyRole.ADMIN,
                               features=[feature])
    return make_client(secret)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "all", "role": "admin"},
        {"name": "all", "role": "service", "features": []},
        {"name": "other", "role": "service", "features": ["classifier"]},
        {"name": "wider", "role": "admin", "features": ["support-bot", "classifier"]},
    ],
)
def test_a_restricted_admin_cannot_create_a_broader_key(restricted_admin, body):
    before = ApiKey.objects.count()
    error = assert_error(restricted_admin.post("/api/v1/keys", body, format="json"), 403, "forbidden")
    assert error["details"] == {"features": sorted(body.get("features", []))}
    assert ApiKey.objects.count() == before


@pytest.mark.parametrize("role", ["service", "admin"])
def test_a_restricted_admin_creates_keys_within_its_features(restricted_admin, role):
    response = restricted_admin.post("/api/v1/keys", {"name": "n", "role": role, "features": ["support-bot"]},
                                     format="json")
    assert response.status_code == 201, response.content
    assert response.json()["features"] == ["support-bot"]


def test_a_restricted_admin_revokes_only_keys_within_its_features(restricted_admin, admin_key, tenant, feature):
    unrestricted, _ = admin_key
    # A key broader than itself is out of its sight, like another tenant's: 404
    assert_error(restricted_admin.delete(f"/api/v1/keys/key_{unrestricted.pk.hex}"), 404, "not_found")
    assert ApiKey.objects.get(pk=unrestricted.pk).revoked_at is None
    narrow, _ = api_key_create(tenant=tenant, actor=Actor.system(), name="n", features=[feature])
    response = restricted_admin.delete(f"/api/v1/keys/key_{narrow.pk.hex}")
    assert response.status_code == 200 and response.json()["revoked_at"]


def test_an_unrestricted_admin_creates_any_key(admin_api, classifier):
    assert admin_api.post("/api/v1/keys", {"name": "all", "role": "admin"}, format="json").status_code == 201
    response = admin_api.post("/api/v1/keys", {"name": "c", "features": ["classifier"]}, format="json")
    assert response.status_code == 201


# --- alert channels and alerts are the tenant's: a restricted key sees its features' budget alerts ---


def test_a_restricted_admin_may_not_manage_alert_channels(restricted_admin, admin_api):
    made = admin_api.post("/api/v1/alert-channels", {"name": "Finance", "kind": "email",
                                                      "email_addresses": ["fin@acme.test"]}, format="json")
    assert made.status_code == 201, made.content
    path = f"/api/v1/alert-channels/{made.json()['id']}"
    for answer in (
        restricted_admin.get("/api/v1/alert-channels"),
        restricted_admin.post("/api/v1/alert-channels", {"name": "x", "kind": "email",
                                                         "email_addresses": ["a@b.test"]}, format="json"),
        restricted_admin.get(path),
        restricted_admin.patch(path, {"enabled": False}, format="json"),
        restricted_admin.post(f"{path}/test"),
        restricted_admin.delete(path),
    ):
        assert_error(answer, 403, "forbidden")
    assert admin_api.get(path).json()["enabled"] is True


def test_a_restricted_admin_reads_only_its_features_budget_alerts(restricted_admin, admin_api, tenant, feature,
                                                                   classifier):
    from governance.notify.alerts import alert_raise
    from tests.factories import BudgetFactory

    mine = BudgetFactory(tenant=tenant, name="Bot", scope="feature", feature=feature, limit_nano=10**9)
    theirs = BudgetFactory(tenant=tenant, name="Classifier", scope="feature", feature=classifier, limit_nano=10**9)
    company = BudgetFactory(tenant=tenant, name="Company", scope="tenant", limit_nano=10**10)
    for budget in (mine, theirs, company):
        alert_raise(tenant=tenant, kind="threshold", dedup_key=f"t:{budget.pk}", title=budget.name, body="",
                    budget=budget)
    alert_raise(tenant=tenant, kind="drift", dedup_key="drift:1", title="Drift", body="")

    seen = restricted_admin.get("/api/v1/alerts").json()["results"]
    assert [a["title"] for a in seen] == ["Bot"]
    assert sorted(a["title"] for a in admin_api.get("/api/v1/alerts").json()["results"]) == [
        "Bot", "Classifier", "Company", "Drift",
    ]
