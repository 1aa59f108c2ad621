"""Racing requests through real HTTP against PostgreSQL: no overspend, no double count."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from budgets.models import BudgetWindow
from budgets.services import holds_expire
from governance.audit import Actor
from governance.models import KeyRole
from governance.services import api_key_create
from tests.conftest import ThreadClients
from tests.factories import BudgetFactory, FeatureFactory, TenantFactory
from usage.models import UsageEvent, UsageRollup

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

HOLD_NANO = 18_000_000  # 1,000 in + 1,000 out on Sonnet 4.5
ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 1000}
REQUESTS = 200
CLIENTS = 40  # concurrent connections; PostgreSQL allows 100 in all


@pytest.fixture
def setup(live_server):
    tenant = TenantFactory(slug="race")
    feature = FeatureFactory(tenant=tenant, key="support-bot")
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="svc", role=KeyRole.SERVICE)
    return tenant, feature, secret, live_server.url


class Sampler(threading.Thread):
    """Watch the windows while requests race, recording the highest spent + reserved seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peaks: dict[int, int] = {}

    def run(self):
        try:
            while not self.stop.is_set():
                for w in BudgetWindow.objects.all():
                    self.peaks[w.id] = max(self.peaks.get(w.id, 0), w.spent_nano + w.reserved_nano)
        finally:
            connection.close()


def race(url: str, secret: str, body: dict, n: int = REQUESTS) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {secret}"}
    with ThreadClients(base_url=url, headers=headers, timeout=60) as client, ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda _: client.post("/api/v1/allowances", json=body), range(n)))


def commit_all_at_worst_case(url: str, secret: str, hold_ids: list[str]) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    usage = {"usage": {"input_tokens": 1000, "output_tokens": 1000}}
    with ThreadClients(base_url=url, headers=headers, timeout=60) as client, ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda h: client.post(f"/api/v1/allowances/{h}/commit", json=usage), hold_ids))
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}


def check(responses, budgets, url, secret):
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 201}, statuses
    granted = [r.json()["id"] for r in responses if r.json()["granted"]]
    denied = [r.json() for r in responses if not r.json()["granted"]]
    assert len(granted) == 37
    assert all(d["reason"] == "budget_exhausted" and any(b["binding"] for b in d["budgets"]) for d in denied)
    commit_all_at_worst_case(url, secret, granted)
    for budget in budgets:
        window = BudgetWindow.objects.get(budget=budget)
        assert window.spent_nano == budget.limit_nano  # to the unit
        assert window.reserved_nano == 0


def run_with_sampler(fn):
    sampler = Sampler()
    sampler.start()
    try:
        return fn(), sampler
    finally:
        sampler.stop.set()
        sampler.join()


def test_200_racing_requests_on_a_block_budget_grant_exactly_37(setup):
    tenant, feature, secret, url = setup
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=37 * HOLD_NANO)
    responses, sampler = run_with_sampler(lambda: race(url, secret, ASK))
    check(responses, [budget], url, secret)
    assert max(sampler.peaks.values()) <= budget.limit_nano


def test_tenant_and_feature_budgets_both_binding(setup):
    tenant, feature, secret, url = setup
    other = FeatureFactory(tenant=tenant, key="classifier")
    tenant_budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=37 * HOLD_NANO)
    feature_budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=37 * HOLD_NANO)
    BudgetFactory(tenant=tenant, scope="feature", feature=other, limit_nano=10**12)
    responses, sampler = run_with_sampler(lambda: race(url, secret, ASK))
    check(responses, [tenant_budget, feature_budget], url, secret)
    assert max(sampler.peaks.values()) <= 37 * HOLD_NANO


def test_per_run_budget(setup):
    tenant, _, secret, url = setup
    budget = BudgetFactory(tenant=tenant, scope="run", period="total", limit_nano=37 * HOLD_NANO)
    responses, sampler = run_with_sampler(lambda: race(url, secret, {**ASK, "run_id": "agent-run-7"}))
    check(responses, [budget], url, secret)
    assert BudgetWindow.objects.get(budget=budget).run_id == "agent-run-7"
    assert max(sampler.peaks.values()) <= budget.limit_nano


def test_100_threads_reporting_the_same_batch_record_each_event_once(setup):
    tenant, _, secret, url = setup
    events = [
        {"feature": "support-bot", "model": "claude-haiku-4-5", "request_id": f"msg_{i}",
         "usage": {"input_tokens": 100 + i, "output_tokens": 50, "cache_read_input_tokens": 10}}
        for i in range(50)
    ]
    headers = {"Authorization": f"Bearer {secret}"}
    with ThreadClients(base_url=url, headers=headers, timeout=120) as client, ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda _: client.post("/api/v1/usage", json={"events": events}), range(100)))
    assert {r.status_code for r in responses} == {201}
    recorded = sum(1 for r in responses for e in r.json()["results"] if e["status"] == "recorded")
    assert recorded == 50
    assert UsageEvent.objects.filter(tenant=tenant).count() == 50
    ledger = UsageEvent.objects.filter(tenant=tenant).aggregate(cost=Sum("cost_nano"), tokens=Sum("input_tokens"))
    rollups = UsageRollup.objects.filter(tenant=tenant).aggregate(
        cost=Sum("cost_nano"), tokens=Sum("input_tokens"), calls=Sum("calls")
    )
    assert rollups == {**ledger, "calls": 50}


def test_racing_downgrades_never_overspend(setup):
    # The downgrade path decides in a locked transaction, not in the one-statement fast path.
    tenant, feature, secret, url = setup
    feature.fallback_models = ["claude-haiku-4-5"]
    feature.save()
    # Room for 10 Sonnet holds ($0.018) or 30 Haiku holds ($0.006), in any mix.
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10 * HOLD_NANO,
                           enforcement="downgrade")
    responses, sampler = run_with_sampler(lambda: race(url, secret, ASK, n=100))
    bodies = [r.json() for r in responses]
    assert {r.status_code for r in responses} <= {200, 201}
    granted = [b for b in bodies if b["granted"]]
    held = sum(int(b["reserved_usd"].replace(".", "")) * 1000 for b in granted)  # USD with 6 places -> nano
    window = BudgetWindow.objects.get(budget=budget)
    assert window.reserved_nano == held <= budget.limit_nano
    assert budget.limit_nano - held < 6_000_000  # full: not even one more Haiku hold fits
    assert {b["decision"] for b in granted} <= {"granted", "downgraded"}
    assert max(sampler.peaks.values()) <= budget.limit_nano


def test_racing_requests_with_one_idempotency_key_hold_once(setup):
    tenant, feature, secret, url = setup
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10**12)
    responses = race(url, secret, {**ASK, "idempotency_key": "retry-me"}, n=50)
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert BudgetWindow.objects.get(budget=budget).reserved_nano == HOLD_NANO


def test_commits_releases_and_expiry_racing_on_the_same_holds_settle_each_once(setup):
    # Given holds on a tenant and a feature budget, each committed three times (one body),
    # released twice and swept by the expiry task, all at once
    tenant, feature, secret, url = setup
    budgets = [BudgetFactory(tenant=tenant, scope="tenant", limit_nano=10**12),
               BudgetFactory(tenant=tenant, scope="feature", feature=feature, period="day", limit_nano=10**12)]
    holds = [r.json()["id"] for r in race(url, secret, ASK, n=20)]
    usage = {"usage": {"input_tokens": 1000, "output_tokens": 400}}
    headers = {"Authorization": f"Bearer {secret}"}
    calls = [(h, "commit") for h in holds for _ in range(3)] + [(h, "release") for h in holds for _ in range(2)]
    calls.sort(key=lambda c: hash(c) % 7)

    def call(item):
        hold, action = item
        return hold, action, client.post(f"/api/v1/allowances/{hold}/{action}", json=usage if action == "commit" else None)

    with ThreadClients(base_url=url, headers=headers, timeout=60) as client, ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(call, c) for c in calls]
        holds_expire(now=timezone.now() + timedelta(hours=1))  # meanwhile, the sweep finds them all expired
        answers = [f.result() for f in futures]
    # Then each hold ended one way: its commits all answered alike, its releases the other way
    by_hold: dict[str, dict[str, set[int]]] = {}
    for hold, action, response in answers:
        by_hold.setdefault(hold, {"commit": set(), "release": set()})[action].add(response.status_code)
    for outcome in by_hold.values():
        assert outcome in ({"commit": {200}, "release": {409}}, {"commit": {409}, "release": {200}}), outcome
    # And the books balance: nothing held, every committed call spent once on both windows
    spent = UsageEvent.objects.filter(tenant=tenant).aggregate(s=Sum("cost_nano"))["s"] or 0
    committed = {hold for hold, action, r in answers if action == "commit" and r.status_code == 200}
    assert UsageEvent.objects.filter(tenant=tenant).count() == len(committed)
    for budget in budgets:
        window = BudgetWindow.objects.get(budget=budget)
        assert (window.spent_nano, window.reserved_nano) == (spent, 0)
