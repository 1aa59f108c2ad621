"""The API base: authentication, tenant isolation, roles and the contract's error format."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from governance.audit import Actor
from governance.models import ApiKey, AuditEntry, KeyRole
from governance.services import api_key_create
from tests.conftest import make_client
from tests.factories import FeatureFactory


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def test_missing_key_is_401(client, db):
    assert_error(client.get("/api/v1/features"), 401, "unauthenticated")


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Token abc", "Bearer cpt_nope", "Bearer cpt_abc_def", "Basic dXNlcjpwYXNz", "Bearer \x00",
     "Bearer cpt_\x00abc_def", "Bearer cpt_abc_d\x00ef", "Bearer cpt_\xe9_x"],
)
def test_malformed_or_unknown_key_is_401(client, db, header):
    assert_error(client.get("/api/v1/features", HTTP_AUTHORIZATION=header), 401, "unauthenticated")


def test_revoked_key_is_401(admin_api, service_key):
    key, secret = service_key
    assert make_client(secret).get("/api/v1/whoami").status_code == 200  # the key is cached now
    response = admin_api.delete(f"/api/v1/keys/key_{key.pk.hex}")
    assert response.status_code == 200
    assert response.json()["revoked_at"]
    assert_error(make_client(secret).get("/api/v1/features"), 401, "unauthenticated")


def test_inactive_tenant_keys_are_401(api, tenant):
    assert api.get("/api/v1/whoami").status_code == 200  # the key is cached now
    tenant.active = False
    tenant.save()
    assert_error(api.get("/api/v1/features"), 401, "unauthenticated")


def test_a_deleted_key_or_tenant_is_401_at_once(api, service_key, tenant):
    key, secret = service_key
    other = make_client(secret)
    assert other.get("/api/v1/whoami").status_code == 200 and api.get("/api/v1/whoami").status_code == 200
    key.delete()
    assert_error(other.get("/api/v1/whoami"), 401, "unauthenticated")
    tenant.delete()
    assert_error(api.get("/api/v1/whoami"), 401, "unauthenticated")


def test_service_key_is_forbidden_on_management(api, feature):
    assert_error(api.get("/api/v1/keys"), 403, "forbidden")
    assert_error(api.post("/api/v1/features", {"key": "x", "name": "X"}, format="json"), 403, "forbidden")
    assert_error(api.patch(f"/api/v1/features/{feature.key}", {"name": "Y"}, format="json"), 403, "forbidden")
    assert_error(api.delete(f"/api/v1/features/{feature.key}"), 403, "forbidden")


def test_service_key_reads_feature_policy(api, feature):
    response = api.get(f"/api/v1/features/{feature.key}")
    assert response.status_code == 200
    body = response.json()
    assert body["key"] == "support-bot"
    assert body["fail_mode"] == "open"
    assert body["budgets"] == []


def test_other_tenants_feature_is_404(outsider_api, feature):
    assert_error(outsider_api.get(f"/api/v1/features/{feature.key}"), 404, "not_found")
    assert_error(outsider_api.patch(f"/api/v1/features/{feature.key}", {"name": "x"}, format="json"), 404, "not_found")
    assert_error(outsider_api.delete(f"/api/v1/features/{feature.key}"), 404, "not_found")


def test_other_tenants_key_is_404(outsider_api, service_key):
    key, _ = service_key
    assert_error(outsider_api.get(f"/api/v1/keys/key_{key.pk.hex}"), 404, "not_found")
    assert_error(outsider_api.delete(f"/api/v1/keys/key_{key.pk.hex}"), 404, "not_found")
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_feature_restricted_key_is_403_on_other_features(tenant, feature):
    other = FeatureFactory(tenant=tenant, key="classifier")
    _, secret = api_key_create(
        tenant=tenant, actor=Actor.system(), name="r", role=KeyRole.SERVICE, features=[feature]
    )
    api = make_client(secret)
    assert api.get(f"/api/v1/features/{feature.key}").status_code == 200
    assert_error(api.get(f"/api/v1/features/{other.key}"), 403, "forbidden")


def test_key_secret_is_shown_once(admin_api, tenant):
    created = admin_api.post("/api/v1/keys", {"name": "billing", "role": "service"}, format="json")
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("cpt_")
    key_id = created.json()["id"]
    listing = admin_api.get("/api/v1/keys").content.decode()
    one = admin_api.get(f"/api/v1/keys/{key_id}").content.decode()
    assert secret not in listing and secret not in one
    assert "secret" not in json.loads(one)
    assert make_client(secret).get("/api/v1/features").status_code == 200
    assert AuditEntry.objects.filter(tenant=tenant, object_type="apikey", action="create").exists()


def test_key_with_unknown_feature_restriction_is_400(admin_api):
    error = assert_error(
        admin_api.post("/api/v1/keys", {"name": "k", "features": ["nope"]}, format="json"), 400, "unknown_feature"
    )
    assert error["details"]["features"] == ["nope"]


def test_last_used_at_is_written_at_most_once_a_minute(api, service_key, django_assert_max_num_queries):
    key, _ = service_key
    api.get("/api/v1/features")
    first = ApiKey.objects.get(pk=key.pk).last_used_at
    assert first is not None
    api.get("/api/v1/features")
    assert ApiKey.objects.get(pk=key.pk).last_used_at == first


def test_feature_crud_is_audited(admin_api, tenant):
    created = admin_api.post(
        "/api/v1/features",
        {"key": "summarise", "name": "Summarise", "default_model": "claude-haiku-4-5",
         "allowed_models": ["claude-haiku-4-5", "claude-sonnet-4-5"], "max_tokens_cap": 2048,
         "interactive": False, "fail_mode": "closed"},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["fail_mode"] == "closed"
    updated = admin_api.patch("/api/v1/features/summarise", {"max_tokens_cap": 1024}, format="json")
    assert updated.json()["max_tokens_cap"] == 1024
    entry = AuditEntry.objects.filter(tenant=tenant, action="update").get()
    assert entry.before["max_tokens_cap"] == 2048 and entry.after["max_tokens_cap"] == 1024
    assert admin_api.delete("/api/v1/features/summarise").status_code == 204
    assert AuditEntry.objects.filter(tenant=tenant, action="delete").exists()


def test_feature_with_unpriced_model_is_400(admin_api):
    error = assert_error(
        admin_api.post("/api/v1/features", {"key": "x", "name": "X", "allowed_models": ["gpt-4"]}, format="json"),
        400, "invalid_request",
    )
    assert "allowed_models" in error["details"]


def test_duplicate_feature_key_is_409(admin_api, feature):
    assert_error(admin_api.post("/api/v1/features", {"key": feature.key, "name": "Dup"}, format="json"), 409, "conflict")


def test_unknown_field_is_named(admin_api):
    error = assert_error(
        admin_api.post("/api/v1/features", {"key": "x", "name": "X", "max_token_cap": 5}, format="json"),
        400, "invalid_request",
    )
    assert "max_token_cap" in error["details"]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2, 3]", b'"a string"', b"null", b"\xff\xfe", b'{"key": "x", "name": "X", "max_tokens_cap": 1e400}'],
)
def test_malformed_bodies_are_400(admin_api, body):
    response = admin_api.generic("POST", "/api/v1/features", body, content_type="application/json")
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("value", ["abc", -5, 0, 10**30, True, [1], {"a": 1}, 1.5])
def test_wrong_types_and_huge_numbers_are_400(admin_api, value):
    response = admin_api.post("/api/v1/features", {"key": "x", "name": "X", "max_tokens_cap": value}, format="json")
    error = assert_error(response, 400, "invalid_request")
    assert "max_tokens_cap" in error["details"]


def test_oversize_body_is_413(admin_api):
    body = json.dumps({"key": "x", "name": "X", "description": "a" * (1024 * 1024 + 10)})
    assert_error(admin_api.generic("POST", "/api/v1/features", body, content_type="application/json"), 413, "too_large")


def test_unknown_route_is_json_404(admin_api):
    assert_error(admin_api.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(admin_api.get("/api/v2/features"), 404, "not_found")


def test_wrong_method_is_json_405(admin_api):
    assert_error(admin_api.put("/api/v1/features", {}, format="json"), 405, "method_not_allowed")


def test_wrong_content_type_is_415(admin_api):
    response = admin_api.generic("POST", "/api/v1/features", "key=x", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


def test_rate_limit_is_429_with_retry_after(api, settings, feature):
    settings.API_RATE_LIMIT = "3/min"
    from django.core.cache import cache

    cache.clear()
    for _ in range(3):
        assert api.get("/api/v1/features").status_code == 200
    response = api.get("/api/v1/features")
    assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60


def test_database_outage_is_503(api, monkeypatch, feature):
    from django.db import OperationalError

    from governance import selectors

    def down(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(selectors, "feature_list", down)
    assert_error(api.get("/api/v1/features"), 503, "unavailable")


def test_healthz_reports_database_and_broker(client, db, settings):
    settings.HEALTHZ_TOKEN = "probe-token"
    response = client.get("/healthz", HTTP_AUTHORIZATION="Bearer probe-token")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok", "cache": "ok"}


def test_schema_and_docs_are_served(client, db):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/features" in schema.content
    assert b"scheme: bearer" in schema.content  # the key's auth is documented, so docs can send it
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()


def test_create_tenant_command_prints_admin_key_last(db, capsys):
    from django.core.management import call_command

    call_command("create_tenant", "initech", "--name", "Initech", "--timezone", "Europe/Berlin",
                 "--owner-email", "boss@initech.test")
    lines = capsys.readouterr().out.strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("cpt_")
    assert any("one-time password" in line for line in lines)
    response = make_client(secret).get("/api/v1/keys")
    assert response.status_code == 200
    assert timezone.now()


def test_whoami_names_the_key_and_tenant(api, service_key):
    key, _ = service_key
    assert api.get("/api/v1/whoami").json() == {"tenant": "acme", "key_prefix": key.prefix, "role": "service"}


@pytest.mark.parametrize(
    "url,where",
    [("/api/v1/budgets?feature=%00", "feature"), ("/api/v1/features/a%00b", "path"),
     ("/api/v1/whoami?x%00=1", "x\\u0000")],
)
def test_a_nul_in_the_url_is_a_400_naming_where(admin_api, feature, url, where):
    assert where in assert_error(admin_api.get(url), 400, "invalid_request")["details"]
