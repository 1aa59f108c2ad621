"""GET /api/v1/levers: the lever board over the API, its validation and its tenant scope."""

from __future__ import annotations

from datetime import date

import pytest

from budgets.levers import lever_board
from governance.audit import Actor
from governance.models import KeyRole
from governance.services import api_key_create
from tests.conftest import make_client
from tests.factories import FeatureFactory
from tests.test_api_foundation import assert_error
from tests.test_levers import RANGE, demo_like_usage, rollup, usd

URL = "/api/v1/levers"
PARAMS = {"start": "2026-11-01", "end": "2026-11-30"}


def without_nano(value):
    """The selector's board as the API shows it: money as decimal strings only."""
    if isinstance(value, dict):
        return {k: without_nano(v) for k, v in value.items() if not k.endswith("_nano")}
    if isinstance(value, list):
        return [without_nano(v) for v in value]
    return value


def walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def test_service_key_reads_the_whole_board(api, tenant):
    # Given five features of usage
    demo_like_usage(tenant)

    # When a service key asks for the month
    response = api.get(URL, PARAMS)

    # Then it sees every feature ranked by saving, money as decimal strings, nothing dropped
    assert response.status_code == 200, response.content
    body = response.json()
    assert [f["key"] for f in body["features"]] == [
        "assistant", "nightly-report", "doc-qa", "extract", "chat",
    ]
    assistant = body["features"][0]
    assert assistant["recommendation"]["lever"] == "model_selection"
    assert assistant["potential_saving_usd"] == "1.950000"
    assert assistant["levers"]["model_selection"]["by_model"][0]["one_tier_down_model"] == "claude-sonnet-5-5"
    assert body == without_nano(lever_board(tenant=tenant, **RANGE))
    for name, value in walk(body):
        assert not isinstance(value, float) or not name.endswith("_usd"), name


def test_one_feature(admin_api, tenant):
    demo_like_usage(tenant)
    response = admin_api.get(URL, {**PARAMS, "feature": "extract"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["feature"] == "extract"
    assert [f["key"] for f in body["features"]] == ["extract"]
    lever = body["features"][0]["levers"]["max_tokens"]
    assert lever["truncation_rate"] == 0.2
    assert body["totals"]["spend_usd"] == "0.178000"


def test_unknown_feature_is_400(api, tenant):
    error = assert_error(api.get(URL, {**PARAMS, "feature": "nope"}), 400, "unknown_feature")
    assert error["details"] == {"feature": "nope"}


def test_other_tenants_feature_is_unknown_and_their_usage_invisible(outsider_api, tenant):
    # Given the Acme tenant's usage
    demo_like_usage(tenant)
    # When another tenant asks, by key or for everything
    assert_error(outsider_api.get(URL, {**PARAMS, "feature": "assistant"}), 400, "unknown_feature")
    body = outsider_api.get(URL, PARAMS).json()
    # Then it sees nothing of Acme's
    assert body["features"] == []
    assert body["totals"]["spend_usd"] == "0.000000"


def test_key_restricted_to_features_sees_only_those(tenant):
    demo_like_usage(tenant)
    key, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="r", role=KeyRole.SERVICE)
    key.features.set(tenant.features.filter(key__in=["chat", "extract"]))
    client = make_client(secret)

    body = client.get(URL, PARAMS).json()

    assert sorted(f["key"] for f in body["features"]) == ["chat", "extract"]
    assert_error(client.get(URL, {**PARAMS, "feature": "assistant"}), 403, "forbidden")


def test_missing_key_is_401(client, db):
    assert_error(client.get(URL, PARAMS), 401, "unauthenticated")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "yesterday", "end": "2026-11-30"}, "start"),
        ({"start": "2026-11-01", "end": "2026-13-01"}, "end"),
        ({"start": "2026-11-30", "end": "2026-11-01"}, "end"),
        ({"start": "2023-01-01", "end": "2026-11-01"}, "start"),
        ({"start": "0001-01-01", "end": "0001-01-02"}, "start"),
        ({"start": "9999-12-01", "end": "9999-12-31"}, "start"),
        ({"start": "1900-01-01"}, "start"),
        ({**PARAMS, "feature": "x" * 64}, "feature"),
        ({**PARAMS, "group_by": "feature"}, "group_by"),
        ({"start": "\x00", "end": "2026-11-01"}, "start"),
    ],
)
def test_invalid_queries_are_400_naming_the_field(api, params, field):
    error = assert_error(api.get(URL, params), 400, "invalid_request")
    assert field in error["details"]


def test_dates_default_to_the_last_30_days(api, tenant, feature):
    from datetime import timedelta

    from django.utils import timezone

    today = timezone.now().astimezone(tenant.tz).date()
    rollup(feature, "claude-haiku-4-5-20251001", day=today - timedelta(days=29), calls=1, cost_nano=usd("1"))
    rollup(feature, "claude-haiku-4-5-20251001", day=today - timedelta(days=30), calls=1, cost_nano=usd("2"))
    response = api.get(URL)
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["start"], body["end"]) == ((today - timedelta(days=29)).isoformat(), today.isoformat())
    assert body["totals"]["spend_usd"] == "1.000000"


def test_a_start_in_1900_is_refused_with_a_clear_error(api, tenant):
    error = assert_error(api.get(URL, {"start": "1900-01-01"}), 400, "invalid_request")
    assert error["details"] == {"start": ["Must be a day from 2023-01-01 to 2099-12-31."]}
    summary = assert_error(api.get("/api/v1/usage/summary", {"start": "1900-01-01"}), 400, "invalid_request")
    assert summary["details"] == error["details"]
    # A start alone runs to today: more than two years is refused, not silently read.
    long = assert_error(api.get("/api/v1/usage/summary", {"start": "2023-01-01", "end": "2026-01-01"}), 400,
                        "invalid_request")
    assert long["message"] == "Choose at most 731 days (two years); 2023-01-01 to 2026-01-01 is 1,097 days."
    assert long["details"] == {"start": [long["message"]]}


def test_a_feature_with_usage_outside_the_range(api, tenant, feature):
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 10, 1), calls=1, cost_nano=usd("1"))
    body = api.get(URL, PARAMS).json()
    assert body["features"] == []
    body = api.get(URL, {**PARAMS, "feature": feature.key}).json()
    assert body["features"][0]["calls"] == 0


def test_the_schema_documents_the_endpoint(admin_api, db):
    response = admin_api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    operation = schema["paths"]["/api/v1/levers"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"start", "end", "feature"}


def test_feature_keys_are_not_guessable_through_a_restricted_key(tenant):
    # A restricted key asking about a feature of its own tenant it may not use gets 403, while
    # an unknown key gets 400: both name no other tenant's data.
    FeatureFactory(tenant=tenant, key="mine")
    key, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="r", role=KeyRole.SERVICE)
    key.features.set(tenant.features.filter(key="mine"))
    client = make_client(secret)
    assert client.get(URL, {**PARAMS, "feature": "mine"}).status_code == 200
    assert_error(client.get(URL, {**PARAMS, "feature": "ghost"}), 400, "unknown_feature")


@pytest.mark.parametrize(
    "params",
    [
        {**PARAMS, "feature": "ünïcode"},
        {**PARAMS, "feature": "x'; drop table usage_usagerollup; --"},
    ],
)
def test_odd_but_wellformed_queries_never_fail(api, tenant, params):
    demo_like_usage(tenant)
    response = api.get(URL, params)
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert response.json()["error"]["code"] in ("unknown_feature", "invalid_request")
