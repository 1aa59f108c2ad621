"""POST /api/v1/usage and GET /api/v1/usage/summary."""

from __future__ import annotations

import pytest

from budgets.models import BudgetWindow
from tests.factories import BudgetFactory
from tests.test_api_foundation import assert_error
from usage.models import UsageEvent, UsageRollup


def event(request_id="req_1", **over):
    body = {
        "feature": "support-bot",
        "model": "claude-sonnet-4-5-20250929",
        "request_id": request_id,
        "usage": {"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 0,
                  "service_tier": "standard", "some_new_field": {"ignored": True}},
        "stop_reason": "end_turn",
        "latency_ms": 1200,
    }
    body.update(over)
    return body


def test_report_one_event_prices_it_exactly(api, feature):
    response = api.post("/api/v1/usage", event(), format="json")
    assert response.status_code == 201, response.content
    (result,) = response.json()["results"]
    assert result["status"] == "recorded"
    assert result["cost_usd"] == "0.010500"
    assert result["usage_event_id"].startswith("evt_")
    rollup = UsageRollup.objects.get()
    assert (rollup.calls, rollup.cost_nano, rollup.input_tokens, rollup.output_tokens) == (1, 10_500_000, 1000, 500)


def test_rollups_add_every_sum_and_histogram_across_reports(api, feature):
    from django.db.models import Sum

    from usage.models import histogram_bucket

    first = [event("a", latency_ms=900, ttft_ms=200, streamed=True),
             event("b", latency_ms=40_000, stop_reason="max_tokens")]
    second = [event("c", latency_ms=900, ttft_ms=5000), event("d", latency_ms=None)]
    assert api.post("/api/v1/usage", {"events": first}, format="json").status_code == 201
    assert api.post("/api/v1/usage", {"events": second}, format="json").status_code == 201
    rollup = UsageRollup.objects.get()
    # every sum equals the ledger's
    totals = UsageEvent.objects.aggregate(
        cost=Sum("cost_nano"), out=Sum("output_tokens"), latency=Sum("latency_ms"), ttft=Sum("ttft_ms"),
    )
    assert (rollup.calls, rollup.cost_nano, rollup.output_tokens) == (4, totals["cost"], totals["out"])
    assert (rollup.latency_sum_ms, rollup.latency_count) == (totals["latency"], 3)
    assert (rollup.ttft_sum_ms, rollup.ttft_count) == (totals["ttft"], 2)
    assert (rollup.truncations, rollup.streamed_calls) == (1, 1)
    assert (rollup.max_tokens_sum, rollup.max_tokens_calls) == (0, 0)  # reports carry no max_tokens
    latency = [0] * len(rollup.latency_histogram)
    for ms in (900, 40_000, 900):
        latency[histogram_bucket(ms)] += 1
    ttft = [0] * len(rollup.ttft_histogram)
    for ms in (200, 5000):
        ttft[histogram_bucket(ms)] += 1
    assert (rollup.latency_histogram, rollup.ttft_histogram) == (latency, ttft)


def test_same_request_id_twice_is_one_event(api, feature):
    api.post("/api/v1/usage", event(), format="json")
    again = api.post("/api/v1/usage", event(), format="json")
    assert again.json()["results"][0]["status"] == "duplicate"
    assert UsageEvent.objects.count() == 1
    assert UsageRollup.objects.get().calls == 1


def test_batch_with_a_repeat_inside_records_it_once(api, feature):
    response = api.post("/api/v1/usage", {"events": [event("a"), event("b"), event("a")]}, format="json")
    assert [r["status"] for r in response.json()["results"]] == ["recorded", "recorded", "duplicate"]
    assert UsageEvent.objects.count() == 2


def test_batch_is_all_or_nothing_and_names_the_index(api, feature):
    bad = event("c")
    bad["usage"]["input_tokens"] = -1
    error = assert_error(
        api.post("/api/v1/usage", {"events": [event("a"), event("b"), bad]}, format="json"), 400, "invalid_request"
    )
    assert error["details"]["index"] == 2
    assert "usage" in error["details"]["errors"]
    assert UsageEvent.objects.count() == 0


def test_unknown_model_is_recorded_unpriced_and_alerted_once_a_day(api, feature, tenant):
    from governance.notify.models import Alert

    # Spent money is never refused: the tokens are kept, the cost is 0 and flagged unpriced
    first = api.post("/api/v1/usage", event("a", model="claude-imaginary-9"), format="json")
    assert first.status_code == 201, first.content
    (result,) = first.json()["results"]
    assert (result["status"], result["priced"], result["cost_usd"]) == ("recorded", False, "0.000000")
    stored = UsageEvent.objects.get(request_id="a")
    assert (stored.priced, stored.input_tokens, stored.output_tokens, stored.family) == (False, 1000, 500, "imaginary")
    api.post("/api/v1/usage", event("b", model="claude-imaginary-9"), format="json")
    (alert,) = Alert.objects.filter(tenant=tenant, kind="unpriced_usage")
    assert "claude-imaginary-9" in alert.title and "prices_load" in alert.body
    # a dated id of a priced alias is priced, not flagged
    dated = api.post("/api/v1/usage", event("c", model="claude-sonnet-4-6-20260217"), format="json").json()
    assert (dated["results"][0]["priced"], dated["results"][0]["cost_usd"]) == (True, "0.010500")


def test_unknown_feature_is_400(api, feature):
    assert_error(api.post("/api/v1/usage", event(feature="nope"), format="json"), 400, "unknown_feature")


@pytest.mark.parametrize("tokens", [-5, 10**12, "many", None, 1.5])
def test_negative_or_absurd_token_counts_are_400(api, feature, tokens):
    body = event()
    body["usage"]["output_tokens"] = tokens
    assert_error(api.post("/api/v1/usage", body, format="json"), 400, "invalid_request")


def test_more_than_1000_events_is_413(api, feature):
    events = [event(f"r{i}") for i in range(1001)]
    assert_error(api.post("/api/v1/usage", {"events": events}, format="json"), 413, "too_large")


def test_usage_is_recorded_even_over_budget_and_charged(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=1_000_000)
    response = api.post("/api/v1/usage", event(), format="json")
    assert response.status_code == 201
    window = BudgetWindow.objects.get(budget=budget)
    assert window.spent_nano == 10_500_000  # over the $0.001 limit: the money was spent
    assert window.spent_tokens == 1500


def test_cache_creation_without_breakdown_counts_as_5m(api, feature):
    body = event()
    body["usage"] = {"input_tokens": 200, "output_tokens": 300, "cache_creation_input_tokens": 4000}
    body["model"] = "claude-haiku-4-5"
    response = api.post("/api/v1/usage", body, format="json")
    assert response.json()["results"][0]["cost_usd"] == "0.006700"
    assert UsageEvent.objects.get().cache_write_5m_tokens == 4000


def test_summary_groups_by_feature_model_and_day(api, feature):
    api.post("/api/v1/usage", {"events": [event("a"), event("b", model="claude-haiku-4-5")]}, format="json")
    response = api.get("/api/v1/usage/summary", {"group_by": "feature,model,day"})
    assert response.status_code == 200, response.content
    rows = response.json()["rows"]
    assert {(r["feature"], r["model"], r["calls"]) for r in rows} == {
        ("support-bot", "claude-haiku-4-5-20251001", 1), ("support-bot", "claude-sonnet-4-5-20250929", 1)
    }
    total = response.json()["total"]
    assert total["cost_usd"] == "0.014000"
    assert total["tokens"]["input_tokens"] == 2000


def test_summary_rejects_unknown_groups(api, feature):
    assert_error(api.get("/api/v1/usage/summary", {"group_by": "colour"}), 400, "invalid_request")
    assert_error(api.get("/api/v1/usage/summary", {"start": "yesterday"}), 400, "invalid_request")


def test_outsider_cannot_report_to_or_read_another_tenant(outsider_api, api, feature):
    api.post("/api/v1/usage", event(), format="json")
    assert_error(outsider_api.post("/api/v1/usage", event("x"), format="json"), 400, "unknown_feature")
    assert outsider_api.get("/api/v1/usage/summary").json()["total"]["calls"] == 0


def _key_for(tenant, *features):
    from governance.audit import Actor
    from governance.services import api_key_create
    from tests.conftest import make_client

    return make_client(api_key_create(tenant=tenant, actor=Actor.system(), name="scoped", features=list(features))[1])


def test_a_feature_restricted_key_sums_only_its_own_feature(api, tenant, feature):
    # Given spend on the key's feature and on another one
    from tests.factories import FeatureFactory

    FeatureFactory(tenant=tenant, key="classifier")
    api.post("/api/v1/usage", {"events": [event("a"), event("b", feature="classifier")]}, format="json")

    # When a key restricted to support-bot asks for the summary without naming a feature
    body = _key_for(tenant, feature).get("/api/v1/usage/summary").json()

    # Then it sees its feature's call only, not the tenant's
    assert body["total"]["calls"] == 1
    assert [row["feature"] for row in body["rows"]] == ["support-bot"]


def test_a_key_restricted_to_several_features_names_one(api, tenant, feature):
    from tests.factories import FeatureFactory

    other = FeatureFactory(tenant=tenant, key="classifier")
    scoped = _key_for(tenant, feature, other)
    error = assert_error(scoped.get("/api/v1/usage/summary"), 403, "forbidden")
    assert "feature=" in error["message"]
    assert scoped.get("/api/v1/usage/summary", {"feature": "classifier"}).status_code == 200
