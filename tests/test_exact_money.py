"""Each way a hostile or careless client broke the books, through HTTP, with the exact answer it now gets.

The numbers follow issue 13's reproductions; prices are the catalog's (USD per MTok):
Haiku 4.5 $1 / $5, Opus 4.1 $15 / $75, Opus 4.6 $5 / $25 (fast 6x, US geo 1.1x), Sonnet 4.5 $3 / $15.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from budgets.models import BudgetWindow, Hold
from budgets.services import budget_create, holds_expire
from governance.audit import Actor
from governance.models import KeyRole
from governance.services import api_key_create
from tests.conftest import ThreadClients
from tests.factories import BudgetFactory, FeatureFactory, TenantFactory
from tests.test_api_foundation import assert_error
from usage.models import UsageEvent
from usage.money import nano_to_usd

NANO = 1_000_000_000


def ask(api, **over):
    body = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 1000}
    return api.post("/api/v1/allowances", {**body, **over}, format="json")


def commit(api, hold_id, **body):
    return api.post(f"/api/v1/allowances/{hold_id}/commit", body, format="json")


# --- 1. the committed model's budgets are charged, whatever was reserved ------------------------


def test_a_commit_of_another_model_is_charged_to_that_models_budgets(api, tenant, feature):
    # Given an Opus-only block budget of $0.05 (and a roomy tenant budget)
    opus = BudgetFactory(tenant=tenant, name="Opus cap", scope="tenant", model_families=["opus"],
                         limit_nano=NANO // 20, period="month")
    BudgetFactory(tenant=tenant, name="Company", scope="tenant", limit_nano=100 * NANO)
    # When a client reserves Haiku five times and commits each as Opus 4.1 (1,000 in, 1,000 out: $0.09)
    for n in range(5):
        hold = ask(api, model="claude-haiku-4-5", input_tokens=1000, max_tokens=20_000).json()
        answer = commit(api, hold["id"], model="claude-opus-4-1", request_id=f"msg_{n}",
                        usage={"input_tokens": 1000, "output_tokens": 1000})
        assert answer.status_code == 200, answer.content
        # Then the money is recorded and flagged: no hold covered it and it took the Opus cap past its limit
        assert answer.json()["cost_usd"] == "0.090000" and answer.json()["off_hold"] is True
    window = BudgetWindow.objects.get(budget=opus)
    assert window.spent_nano == 450_000_000 == sum(UsageEvent.objects.values_list("cost_nano", flat=True))
    # and the Opus cap now refuses Opus: it is full
    denied = ask(api, model="claude-opus-4-1", input_tokens=10, max_tokens=10).json()
    assert (denied["granted"], denied["reason"]) == (False, "budget_exhausted")


def test_a_client_that_ignores_its_downgrade_is_charged_to_the_model_it_used(api, tenant):
    feature = FeatureFactory(tenant=tenant, key="support-bot", fallback_models=["claude-haiku-4-5"])
    sonnet = BudgetFactory(tenant=tenant, name="Sonnet", scope="feature", feature=feature,
                           model_families=["sonnet"], enforcement="downgrade", limit_nano=10_000_000)
    answer = ask(api).json()  # Sonnet's $0.018 worst case does not fit $0.01: downgraded to Haiku
    assert (answer["decision"], answer["model"]) == ("downgraded", "claude-haiku-4-5-20251001")
    # The client calls Sonnet anyway: 1,000 in + 1,000 out = $0.018
    body = commit(api, answer["id"], model="claude-sonnet-4-5", usage={"input_tokens": 1000, "output_tokens": 1000})
    assert body.json()["off_hold"] is True
    assert BudgetWindow.objects.get(budget=sonnet).spent_nano == 18_000_000


# --- 2. a hold is a worst case: geo, fast mode and web searches ----------------------------------


@pytest.mark.parametrize(
    ("extra", "reserved"),
    [
        ({}, "0.030000"),  # 1,000 in at $5 + 1,000 out at $25
        ({"inference_geo": "us"}, "0.033000"),  # 1.1x
        ({"speed": "fast"}, "0.180000"),  # 6x on Opus 4.6
        ({"speed": "fast", "inference_geo": "us"}, "0.198000"),
        ({"max_web_searches": 5}, "0.080000"),  # + 5 x $0.01
    ],
)
def test_the_hold_covers_geo_fast_mode_and_web_searches(api, feature, extra, reserved):
    answer = ask(api, model="claude-opus-4-6", **extra).json()
    assert answer["reserved_usd"] == reserved


def test_a_us_fast_call_with_web_searches_costs_no_more_than_its_hold(api, feature):
    hold = ask(api, model="claude-opus-4-6", inference_geo="us", speed="fast", max_web_searches=5).json()
    usage = {"input_tokens": 1000, "output_tokens": 1000, "inference_geo": "us", "speed": "fast",
             "server_tool_use": {"web_search_requests": 5}}
    body = commit(api, hold["id"], usage=usage).json()
    assert hold["reserved_usd"] == body["cost_usd"] == "0.248000"  # 0.198 + 0.05
    assert body["released_usd"] == "0.000000"


def test_declared_cache_reads_are_held_as_writes_in_case_they_miss(api, feature):
    # 1,000 declared reads of Sonnet 4.5 would cost $0.0003; a miss writes them at $3.75/MTok
    answer = ask(api, input_tokens=1000, cache_read_tokens=1000, max_tokens=1).json()
    assert answer["reserved_usd"] == "0.003765"  # 1,000 x 3.75 + 1 x 15, per MTok


# --- 5, 6. one request_id is one call ------------------------------------------------------------


def test_a_request_id_already_recorded_is_a_conflict_on_another_hold(api, feature):
    first, second = ask(api).json(), ask(api).json()
    assert commit(api, first["id"], request_id="msg_1", usage={"input_tokens": 1, "output_tokens": 1}).status_code == 200
    assert_error(commit(api, second["id"], request_id="msg_1", usage={"input_tokens": 1, "output_tokens": 1}),
                 409, "conflict")
    assert Hold.objects.get(pk=Hold.objects.order_by("created_at").last().pk).state == "held"


def test_a_report_repeating_a_request_id_with_another_body_is_a_conflict(api, feature):
    event = {"feature": "support-bot", "model": "claude-sonnet-4-5", "request_id": "req_9",
             "usage": {"input_tokens": 100, "output_tokens": 10}}
    assert api.post("/api/v1/usage", event, format="json").status_code == 201
    again = api.post("/api/v1/usage", event, format="json")
    assert again.json()["results"][0]["status"] == "duplicate"
    changed = {**event, "usage": {"input_tokens": 100, "output_tokens": 9999}}
    error = assert_error(api.post("/api/v1/usage", changed, format="json"), 409, "conflict")
    assert error["details"] == {"index": 0, "request_id": "req_9"}
    assert UsageEvent.objects.get().output_tokens == 10


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_holds_committed_at_once_with_one_request_id_record_one_call(live_server):
    tenant = TenantFactory(slug="race-commit")
    FeatureFactory(tenant=tenant, key="support-bot")
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="svc", role=KeyRole.SERVICE)
    headers = {"Authorization": f"Bearer {secret}"}
    with ThreadClients(base_url=live_server.url, headers=headers, timeout=60) as client:
        holds = [client.post("/api/v1/allowances", json={
            "feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 10, "max_tokens": 10,
        }).json()["id"] for _ in range(30)]
        body = {"request_id": "msg_same", "usage": {"input_tokens": 10, "output_tokens": 10}}
        with ThreadPoolExecutor(15) as pool:
            answers = list(pool.map(lambda h: client.post(f"/api/v1/allowances/{h}/commit", json=body), holds))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * 29, statuses
    assert all(a.json()["error"]["code"] == "conflict" for a in answers if a.status_code == 409)
    assert UsageEvent.objects.filter(tenant=tenant).count() == 1


# --- 7. a budget created mid-window counts what was spent ----------------------------------------


def test_a_budget_created_mid_day_starts_from_the_days_spend(api, admin_api, feature):
    # $12.11 spent today: 1,000,000 tokens out of Sonnet 4.5 ($15) is $15; use 807,333 out ≈ $12.11
    report = {"feature": "support-bot", "model": "claude-sonnet-4-5", "request_id": "early",
              "usage": {"input_tokens": 0, "output_tokens": 807_334}}
    assert api.post("/api/v1/usage", report, format="json").status_code == 201
    created = admin_api.post("/api/v1/budgets", {"name": "Daily", "scope": "tenant", "period": "day",
                                                  "limit_usd": "5", "enforcement": "block"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["spent_usd"] == "12.110010"
    denied = ask(api, input_tokens=10, max_tokens=10).json()
    assert (denied["granted"], denied["reason"]) == (False, "budget_exhausted")


def test_a_budget_narrowed_to_a_family_recounts_its_window(api, admin_api, tenant, feature):
    budget = admin_api.post("/api/v1/budgets", {"name": "All", "scope": "tenant", "period": "month",
                                                 "limit_usd": "100"}, format="json").json()
    for model, rid in (("claude-sonnet-4-5", "s"), ("claude-haiku-4-5", "h")):
        api.post("/api/v1/usage", {"feature": "support-bot", "model": model, "request_id": rid,
                                   "usage": {"input_tokens": 1000, "output_tokens": 0}}, format="json")
    assert admin_api.get(f"/api/v1/budgets/{budget['id']}").json()["spent_usd"] == "0.004000"
    patched = admin_api.patch(f"/api/v1/budgets/{budget['id']}", {"model_families": ["haiku"]}, format="json")
    assert patched.json()["spent_usd"] == "0.001000"


# --- 8. an expired hold's idempotency key never answers a fresh grant ----------------------------


def test_repeating_the_idempotency_key_of_an_expired_hold_answers_it_expired(api, feature):
    first = ask(api, idempotency_key="k-exp", ttl_seconds=10)
    assert first.status_code == 201
    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        before_sweep = ask(api, idempotency_key="k-exp", ttl_seconds=10)
        holds_expire()
        after_sweep = ask(api, idempotency_key="k-exp", ttl_seconds=10)
    for answer in (before_sweep, after_sweep):
        body = answer.json()
        assert answer.status_code == 200
        assert (body["granted"], body["state"], body["reason"], body["id"]) == (
            False, "expired", "hold_expired", first.json()["id"])
    assert Hold.objects.count() == 1


# --- 10. a feature-restricted key sees only its features' holds ----------------------------------


def test_a_restricted_key_cannot_touch_another_features_holds(api, tenant, feature):
    other = FeatureFactory(tenant=tenant, key="other")
    hold_id = ask(api).json()["id"]
    key, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="narrow", role=KeyRole.SERVICE)
    key.features.set([other])
    narrow = api.__class__()
    narrow.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert_error(narrow.get(f"/api/v1/allowances/{hold_id}"), 404, "not_found")
    assert_error(commit(narrow, hold_id, usage={"input_tokens": 1, "output_tokens": 1}), 404, "not_found")
    assert_error(narrow.post(f"/api/v1/allowances/{hold_id}/release"), 404, "not_found")
    assert Hold.objects.get().state == "held"


# --- the denial says why -------------------------------------------------------------------------


def test_a_call_bigger_than_what_remains_is_told_so_not_that_the_budget_is_exhausted(api, tenant, feature):
    budget = budget_create(tenant=tenant, actor=Actor.system(), name="Five", scope="tenant", limit_nano=5 * NANO)
    window = BudgetWindow.objects.get(budget=budget)
    window.spent_nano = 10_000_000  # $0.01 spent: $4.99 remain
    window.save()
    # Sonnet 4.5: 1,000 in ($0.003) + 333,800 out ($5.007) = $5.01 worst case
    body = ask(api, input_tokens=1000, max_tokens=333_800).json()
    assert (body["granted"], body["reason"]) == (False, "exceeds_remaining")
    assert (body["remaining_usd"], body["requested_usd"]) == ("4.990000", "5.010000")
    window.spent_nano = 5 * NANO
    window.save()
    assert ask(api, input_tokens=10, max_tokens=10).json()["reason"] == "budget_exhausted"


def test_a_restricted_admin_key_manages_only_its_own_features(api, admin_api, tenant, feature):
    other = FeatureFactory(tenant=tenant, key="other")
    company = admin_api.post("/api/v1/budgets", {"name": "Company", "scope": "tenant", "limit_usd": "100"},
                             format="json").json()
    others = admin_api.post("/api/v1/budgets", {"name": "Other", "scope": "feature", "feature": "other",
                                                "limit_usd": "5"}, format="json").json()
    key, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="team", role=KeyRole.ADMIN)
    key.features.set([feature])
    team = api.__class__()
    team.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    # It reads its features, their budgets and the tenant-wide budgets that count them; not the others'
    assert [f["key"] for f in team.get("/api/v1/features").json()["results"]] == ["support-bot"]
    assert {b["name"] for b in team.get("/api/v1/budgets").json()["results"]} == {"Company"}
    assert_error(team.get(f"/api/v1/budgets/{others['id']}"), 404, "not_found")
    assert_error(team.patch("/api/v1/features/other", {"name": "x"}, format="json"), 403, "forbidden")
    assert [k["name"] for k in team.get("/api/v1/keys").json()["results"]] == ["team"]  # itself, not the others
    # It may not change what is broader than itself
    assert_error(team.patch(f"/api/v1/budgets/{company['id']}", {"limit_usd": "1"}, format="json"), 403, "forbidden")
    assert_error(team.post("/api/v1/budgets", {"name": "Wide", "scope": "tenant", "limit_usd": "1"}, format="json"),
                 403, "forbidden")
    assert_error(team.post("/api/v1/features", {"key": "new", "name": "New"}, format="json"), 403, "forbidden")
    # and may manage its own feature's budgets
    mine = team.post("/api/v1/budgets", {"name": "Mine", "scope": "feature", "feature": "support-bot",
                                         "limit_usd": "2"}, format="json")
    assert mine.status_code == 201, mine.content
    assert other.key == "other"


@given(st.integers(-(10**20), 10**20) | st.sampled_from([0, 1, -1, 999_999_999, 10**9, -(10**9), 12_500_000]))
def test_nano_usd_is_written_in_integers_as_the_decimal_formula_writes_it(nano):
    value = (Decimal(nano) / NANO).quantize(Decimal("0.000000001"))
    whole, _, frac = f"{value:f}".rstrip("0").partition(".")
    assert nano_to_usd(nano) == f"{whole}.{frac.ljust(6, '0')}"
