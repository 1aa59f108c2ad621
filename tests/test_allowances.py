"""The allowance flow through the API: hold, commit, release, read, downgrade, expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from budgets.models import BudgetWindow, Hold
from budgets.services import holds_expire
from tests.factories import BudgetFactory, FeatureFactory
from tests.test_api_foundation import assert_error
from usage.models import UsageEvent

# 1,000 in + 1,000 out on Sonnet 4.5 = $0.003 + $0.015 = $0.018 worst case.
ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 1000}
HOLD_NANO = 18_000_000
USAGE = {"input_tokens": 1000, "output_tokens": 400}  # $0.003 + $0.006 = $0.009


def ask(api, **over):
    return api.post("/api/v1/allowances", {**ASK, **over}, format="json")


def window_of(budget):
    return BudgetWindow.objects.get(budget=budget)


def test_granted_allowance_holds_the_worst_case(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10**9)
    response = ask(api)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["granted"] is True and body["decision"] == "granted" and body["reason"] is None
    assert body["id"].startswith("hold_")
    assert body["model"] == "claude-sonnet-4-5-20250929"
    assert body["reserved_usd"] == "0.018000"
    assert body["reserved_tokens"] == 2000
    (status,) = body["budgets"]
    assert status["id"] == f"bud_{budget.pk.hex}"
    assert status["reserved_usd"] == "0.018000"
    assert status["remaining_usd"] == "0.982000"
    assert status["binding"] is False
    assert window_of(budget).reserved_nano == HOLD_NANO


def test_max_tokens_is_clamped_to_the_feature_cap(api, feature):
    feature.max_tokens_cap = 256
    feature.save()
    body = ask(api, max_tokens=4096).json()
    assert body["max_tokens"] == 256 and body["clamped"] is True
    assert body["reserved_tokens"] == 1256


def test_commit_moves_the_hold_to_spent_at_actual_cost(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10**9)
    asked = ask(api).json()
    hold_id = asked["id"]
    response = api.post(f"/api/v1/allowances/{hold_id}/commit",
                        {"usage": USAGE, "request_id": "msg_1", "stop_reason": "end_turn",
                         "latency_ms": 900, "ttft_ms": 200, "streamed": True}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "committed" and body["late"] is False
    assert body["cost_usd"] == "0.009000" and body["released_usd"] == "0.009000"
    (status,) = body["budgets"]
    assert (status["spent_usd"], status["reserved_usd"], status["spent_tokens"]) == ("0.009000", "0.000000", 1400)
    assert status["window_start"] == asked["budgets"][0]["window_start"]
    assert status["window_end"] == asked["budgets"][0]["window_end"]
    window = window_of(budget)
    assert (window.spent_nano, window.reserved_nano) == (9_000_000, 0)
    assert (window.spent_tokens, window.reserved_tokens) == (1400, 0)
    event = UsageEvent.objects.get()
    assert event.request_id == "msg_1" and event.max_tokens == 1000 and event.source == "commit"
    # the same commit again answers the same; a different one is a conflict
    again = api.post(f"/api/v1/allowances/{hold_id}/commit",
                     {"usage": USAGE, "request_id": "msg_1", "stop_reason": "end_turn",
                      "latency_ms": 900, "ttft_ms": 200, "streamed": True}, format="json")
    assert again.status_code == 200 and again.json()["usage_event_id"] == body["usage_event_id"]
    assert_error(api.post(f"/api/v1/allowances/{hold_id}/commit", {"usage": {**USAGE, "output_tokens": 1}},
                          format="json"), 409, "conflict")
    assert window_of(budget).spent_nano == 9_000_000
    assert_error(api.post(f"/api/v1/allowances/{hold_id}/release"), 409, "conflict")


def test_release_drops_the_hold_and_is_idempotent(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=10**9)
    hold_id = ask(api).json()["id"]
    assert api.post(f"/api/v1/allowances/{hold_id}/release").json() == {"id": hold_id, "state": "released"}
    assert api.post(f"/api/v1/allowances/{hold_id}/release").json()["state"] == "released"
    assert window_of(budget).reserved_nano == 0
    assert_error(api.post(f"/api/v1/allowances/{hold_id}/commit", {"usage": USAGE}, format="json"), 409, "conflict")
    assert api.get(f"/api/v1/allowances/{hold_id}").json()["state"] == "released"


def test_denied_when_the_block_budget_cannot_fit_the_hold(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=HOLD_NANO * 2, period="day")
    assert ask(api).status_code == 201
    assert ask(api).status_code == 201
    response = ask(api)
    assert response.status_code == 200
    body = response.json()
    assert body["granted"] is False and body["id"] is None
    assert body["decision"] == "denied" and body["reason"] == "budget_exhausted"
    assert body["budgets"][0]["binding"] is True
    assert body["retry_after"] == window_of(budget).end.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert window_of(budget).reserved_nano == HOLD_NANO * 2
    assert Hold.objects.count() == 2


def test_total_budget_denial_has_no_retry_after(api, feature, tenant):
    BudgetFactory(tenant=tenant, scope="tenant", period="total", limit_nano=1)
    body = ask(api).json()
    assert body["decision"] == "denied" and body["retry_after"] is None


def test_token_limits_deny_too(api, feature, tenant):
    BudgetFactory(tenant=tenant, scope="tenant", limit_nano=None, limit_tokens=3000)
    assert ask(api).status_code == 201
    assert ask(api).json()["decision"] == "denied"


def test_alert_budgets_never_deny_but_carry_the_hold(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=1, enforcement="alert")
    assert ask(api).json()["decision"] == "granted"
    assert window_of(budget).reserved_nano == HOLD_NANO


def test_downgrade_moves_to_the_first_fallback_that_fits(api, tenant):
    feature = FeatureFactory(tenant=tenant, key="support-bot",
                             fallback_models=["claude-opus-4-1", "claude-haiku-4-5"])
    # Sonnet needs $0.018; Opus 4.1 would need $0.09; Haiku needs $0.006.
    BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10_000_000, enforcement="downgrade")
    body = ask(api).json()
    assert body["decision"] == "downgraded" and body["granted"] is True
    assert body["model"] == "claude-haiku-4-5-20251001"
    assert body["reserved_usd"] == "0.006000"


def test_model_family_budget_only_gates_its_family(api, tenant):
    FeatureFactory(tenant=tenant, key="support-bot")
    BudgetFactory(tenant=tenant, scope="tenant", model_families=["opus"], limit_nano=1)
    assert ask(api).json()["decision"] == "granted"  # sonnet is not capped
    assert ask(api, model="claude-opus-4-5").json()["decision"] == "denied"


def test_run_budgets_cap_each_run_separately(api, feature, tenant):
    BudgetFactory(tenant=tenant, scope="run", limit_nano=HOLD_NANO)
    assert ask(api, run_id="run-1").json()["granted"] is True
    assert ask(api, run_id="run-1").json()["granted"] is False
    assert ask(api, run_id="run-2").json()["granted"] is True
    assert ask(api).json()["granted"] is True  # a call outside any run


def test_idempotency_key_returns_the_first_answer(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=10**9)
    first = ask(api, idempotency_key="k1").json()
    second = ask(api, idempotency_key="k1")
    assert second.status_code == 201 and second.json()["id"] == first["id"]
    assert window_of(budget).reserved_nano == HOLD_NANO
    assert_error(ask(api, idempotency_key="k1", max_tokens=5), 409, "conflict")


def test_a_denial_with_an_idempotency_key_is_kept_and_replayed(api, feature, tenant):
    tenant_budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=10**9)
    feature_budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=HOLD_NANO - 1)
    first = ask(api, idempotency_key="d1")
    assert first.status_code == 200 and first.json()["decision"] == "denied"
    binding = {b["id"]: b["binding"] for b in first.json()["budgets"]}
    assert binding == {f"bud_{feature_budget.pk.hex}": True, f"bud_{tenant_budget.pk.hex}": False}
    again = ask(api, idempotency_key="d1")
    assert again.status_code == 200 and again.json()["decision"] == "denied"
    # Nothing was reserved on either window, and the kept denial is no allowance.
    assert {w.reserved_nano for w in BudgetWindow.objects.all()} == {0}
    (kept,) = Hold.objects.all()
    assert kept.state == "denied" and kept.finished_at is not None
    assert api.get(f"/api/v1/allowances/hold_{kept.pk.hex}").status_code == 404


def test_expired_hold_is_released_by_the_beat_task_and_its_late_commit_charged(api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=10**9)
    hold_id = ask(api, ttl_seconds=10).json()["id"]
    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        assert holds_expire() == 1
        assert holds_expire() == 0
        assert window_of(budget).reserved_nano == 0
        assert api.get(f"/api/v1/allowances/{hold_id}").json()["state"] == "expired"
        body = api.post(f"/api/v1/allowances/{hold_id}/commit", {"usage": USAGE}, format="json").json()
    assert body["late"] is True and body["state"] == "committed"
    window = window_of(budget)
    assert (window.spent_nano, window.reserved_nano) == (9_000_000, 0)


def test_another_tenants_hold_is_404_for_every_verb(api, outsider_api, feature):
    hold_id = ask(api).json()["id"]
    assert_error(outsider_api.get(f"/api/v1/allowances/{hold_id}"), 404, "not_found")
    assert_error(outsider_api.post(f"/api/v1/allowances/{hold_id}/commit", {"usage": USAGE}, format="json"),
                 404, "not_found")
    assert_error(outsider_api.post(f"/api/v1/allowances/{hold_id}/release"), 404, "not_found")
    assert api.get(f"/api/v1/allowances/{hold_id}").json()["state"] == "held"


@pytest.mark.parametrize("hold_id", ["nope", "hold_zzz", "bud_" + "0" * 32, "hold_" + "0" * 32])
def test_malformed_or_missing_hold_ids_are_404(api, feature, hold_id):
    assert_error(api.get(f"/api/v1/allowances/{hold_id}"), 404, "not_found")


@pytest.mark.parametrize(
    "over,code,field",
    [
        ({"input_tokens": -1}, "invalid_request", "input_tokens"),
        ({"max_tokens": 0}, "invalid_request", "max_tokens"),
        ({"max_tokens": "lots"}, "invalid_request", "max_tokens"),
        ({"ttl_seconds": 5}, "invalid_request", "ttl_seconds"),
        ({"ttl_seconds": 90001}, "invalid_request", "ttl_seconds"),
        ({"metadata": {"blob": "x" * 5000}}, "invalid_request", "metadata"),
        ({"metadata": [1, 2]}, "invalid_request", "metadata"),
        ({"metadata": {"note": "a\u0000b"}}, "invalid_request", "metadata"),
        ({"metadata": {"deep": [{"k\u0000": 1}]}}, "invalid_request", "metadata"),
        ({"run_id": "run\u0000"}, "invalid_request", "run_id"),
        ({"idempotency_key": "\u0000"}, "invalid_request", "idempotency_key"),
        ({"service_tier": "turbo"}, "invalid_request", "service_tier"),
        ({"cache_read_tokens": 5000}, "invalid_request", "input_tokens"),
        ({"run_id": "r" * 201}, "invalid_request", "run_id"),
        ({"feature": "nope"}, "unknown_feature", "feature"),
        ({"model": "claude-imaginary-9"}, "unknown_model", "model"),
    ],
)
def test_bad_input_gets_the_contract_error(api, feature, over, code, field):
    error = assert_error(ask(api, **over), 400, code)
    assert field in error["details"] or field in str(error["details"])


def test_model_not_allowed_and_inactive_feature(api, feature):
    feature.allowed_models = ["claude-haiku-4-5"]
    feature.save()
    assert_error(ask(api), 400, "model_not_allowed")
    feature.active = False
    feature.save()
    assert_error(ask(api, model="claude-haiku-4-5"), 400, "feature_inactive")


def test_non_json_is_400(api, feature):
    response = api.generic("POST", "/api/v1/allowances", "{feature: oops", content_type="application/json")
    assert_error(response, 400, "invalid_request")


def test_commit_with_malformed_usage_is_400_and_changes_nothing(api, feature):
    hold_id = ask(api).json()["id"]
    for body in [{}, {"usage": "lots"}, {"usage": {"input_tokens": -3, "output_tokens": 1}},
                 {"usage": USAGE, "latency_ms": -1}]:
        response = api.post(f"/api/v1/allowances/{hold_id}/commit", body, format="json")
        assert response.status_code == 400, (body, response.content)
    assert api.get(f"/api/v1/allowances/{hold_id}").json()["state"] == "held"


def test_budget_management_api(admin_api, api, feature, tenant):
    created = admin_api.post("/api/v1/budgets", {
        "name": "Support monthly", "scope": "feature", "feature": "support-bot", "period": "month",
        "limit_usd": "100.00", "enforcement": "block", "thresholds": [80, 50, 100],
    }, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["limit_usd"] == "100.000000" and body["thresholds"] == [50, 80, 100]
    budget_id = body["id"]
    patched = admin_api.patch(f"/api/v1/budgets/{budget_id}", {"limit_usd": "150"}, format="json")
    assert patched.json()["limit_usd"] == "150.000000"
    listed = api.get("/api/v1/budgets", {"feature": "support-bot"}).json()["results"]
    assert [b["id"] for b in listed] == [budget_id]
    assert "forecast_usd" in listed[0]
    assert_error(api.patch(f"/api/v1/budgets/{budget_id}", {"limit_usd": "1"}, format="json"), 403, "forbidden")
    assert_error(admin_api.post("/api/v1/budgets", {"name": "x", "scope": "feature"}, format="json"),
                 400, "invalid_request")
    assert_error(admin_api.post("/api/v1/budgets", {"name": "x", "scope": "tenant", "limit_usd": "-1"},
                                format="json"), 400, "invalid_request")
    assert admin_api.delete(f"/api/v1/budgets/{budget_id}").status_code == 204


def test_other_tenants_budget_is_404(outsider_api, tenant):
    budget = BudgetFactory(tenant=tenant)
    assert_error(outsider_api.get(f"/api/v1/budgets/bud_{budget.pk.hex}"), 404, "not_found")
    assert_error(outsider_api.patch(f"/api/v1/budgets/bud_{budget.pk.hex}", {"name": "x"}, format="json"),
                 404, "not_found")
    assert_error(outsider_api.delete(f"/api/v1/budgets/bud_{budget.pk.hex}"), 404, "not_found")
    assert outsider_api.get("/api/v1/budgets").json()["results"] == []


def test_budget_and_feature_changes_apply_to_the_next_allowance(api, admin_api, feature, tenant):
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10**9)
    assert ask(api).json()["granted"] is True  # the tenant's policy is now cached
    admin_api.patch(f"/api/v1/budgets/bud_{budget.pk.hex}", {"limit_usd": "0.01"}, format="json")
    assert ask(api).json()["decision"] == "denied"
    admin_api.patch("/api/v1/features/support-bot", {"active": False}, format="json")
    assert_error(ask(api), 400, "feature_inactive")


def test_a_window_deleted_behind_the_cache_is_found_again(api, feature, tenant):
    from django.db import connection

    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=10**9)
    assert ask(api).status_code == 201
    with connection.cursor() as cursor:  # no signals: the cached window id goes stale
        cursor.execute("DELETE FROM budgets_budgetwindow")
    assert ask(api).status_code == 201
    assert window_of(budget).reserved_nano == HOLD_NANO


def test_budget_list_forecasts_the_window_end(api, tenant, feature):
    from datetime import UTC, date, datetime

    from tests.factories import ledger_history

    # $0.10 an hour is usual: $24 by Nov 11, $72 in November
    ledger_history(feature, first=date(2026, 10, 1), last=date(2026, 11, 10), calls_in=lambda at: [10**8])
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=100 * 10**9)
    with time_machine.travel(datetime(2026, 11, 11, tzinfo=UTC), tick=False):
        BudgetWindow.objects.create(
            budget=budget, start=datetime(2026, 11, 1, tzinfo=UTC), end=datetime(2026, 12, 1, tzinfo=UTC),
            spent_nano=40 * 10**9,
        )
        (listed,) = api.get("/api/v1/budgets").json()["results"]
    # $40 in 10 of 30 days: $40 + (40 + 14.40) / (24 + 14.40) × $48 (budgets.forecast)
    assert listed["spent_usd"] == "40.000000"
    assert listed["forecast_usd"] == "108.000000"


def test_a_deadlocked_decision_is_decided_again(api, feature, tenant, monkeypatch):
    from django.db import OperationalError

    from budgets import services

    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=10**9)
    real = services._decide
    calls = []

    def deadlock_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("deadlock detected")
        return real(*args)

    monkeypatch.setattr(services, "_decide", deadlock_once)
    assert ask(api).status_code == 201
    assert len(calls) == 2
    assert window_of(budget).reserved_nano == HOLD_NANO


def test_an_unreachable_database_is_not_retried_and_answers_503(api, feature, monkeypatch):
    from django.db import OperationalError

    from budgets import services

    def down(*args):
        raise OperationalError("connection refused")

    monkeypatch.setattr(services, "_decide", down)
    assert_error(ask(api), 503, "unavailable")


def test_deeply_nested_metadata_is_a_clear_error_not_a_crash(api, feature):
    nested = "[" * 3000 + "]" * 3000
    body = '{"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 10, "max_tokens": 10, ' \
           f'"metadata": {{"x": {nested}}}}}'
    response = api.post("/api/v1/allowances", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_metadata_nested_past_32_levels_is_refused(api, feature):
    deep: dict = {}
    for _ in range(40):
        deep = {"d": deep}
    response = ask(api, metadata=deep)
    assert_error(response, 400, "invalid_request")
    assert "metadata" in response.json()["error"]["details"]
