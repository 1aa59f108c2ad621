"""Racing commits and racing workers on PostgreSQL: each alert is raised and delivered exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection

from budgets.models import BudgetWindow
from governance.audit import Actor
from governance.models import KeyRole
from governance.notify import services
from governance.notify.alerts import alert_raise
from governance.notify.models import Alert, Notification, NotificationStatus
from governance.services import api_key_create
from tests.conftest import ThreadClients
from tests.factories import BudgetFactory, FeatureFactory, TenantFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 1000}
USAGE = {"usage": {"input_tokens": 1000, "output_tokens": 400}}  # $0.009
CALL_NANO = 9_000_000
COMMITS = 500
CLIENTS = 40  # concurrent connections; PostgreSQL allows 100 in all
SLACK_PATH = "/services/T000/B000/race"


@pytest.fixture
def setup(live_server, settings, httpserver):
    tenant = TenantFactory(slug="race")
    FeatureFactory(tenant=tenant, key="support-bot")
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="svc", role=KeyRole.SERVICE)
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email", email_addresses=["fin@acme.test"]
    )
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url=httpserver.url_for(SLACK_PATH),
    )
    return tenant, secret, live_server.url


def in_parallel(url: str, secret: str, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {secret}"}
    with ThreadClients(base_url=url, headers=headers, timeout=120) as client, ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda r: client.post(r[0], json=r[1]), requests))


def test_500_concurrent_commits_crossing_a_threshold_send_exactly_one_alert(setup, httpserver, mailoutbox):
    # Given a budget that 500 calls fill exactly, alerting at 50 %, and 500 live holds
    tenant, secret, url = setup
    budget = BudgetFactory(
        tenant=tenant, name="Race", scope="tenant", limit_nano=COMMITS * CALL_NANO, enforcement="alert",
        thresholds=[50],
    )
    holds = in_parallel(url, secret, [("/api/v1/allowances", ASK)] * COMMITS)
    assert {r.status_code for r in holds} == {201}
    assert not Alert.objects.exists()

    # When the 500 calls commit at once (the last 250 all see the window past 50 %)
    commits = in_parallel(url, secret, [(f"/api/v1/allowances/{h.json()['id']}/commit", USAGE) for h in holds])

    # Then every commit succeeded, and each channel heard about 50 % exactly once
    assert {r.status_code for r in commits} == {200}
    assert BudgetWindow.objects.get(budget=budget).spent_nano == COMMITS * CALL_NANO
    alert = Alert.objects.get()
    assert (alert.kind, alert.threshold) == ("threshold", 50)
    assert len(mailoutbox) == 1
    assert len(httpserver.log) == 1
    assert list(Notification.objects.values_list("status", "attempts")) == [(NotificationStatus.SENT, 1)] * 2


def test_racing_workers_send_a_delivery_once(setup, httpserver, mailoutbox):
    # Given one pending delivery per channel, with no worker having run yet
    tenant, _, _ = setup
    from governance import queue

    original = queue.enqueue
    queue.enqueue = lambda task, args, countdown=None: True
    try:
        alert_raise(tenant=tenant, kind="drift", dedup_key="drift:race", title="Drift", body="x")
    finally:
        queue.enqueue = original
    ids = list(Notification.objects.values_list("pk", flat=True))

    # When twenty workers try to deliver each of them at once
    def deliver(notification_id):
        try:
            return services.notification_deliver(notification_id=notification_id).status
        finally:
            connection.close()

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(deliver, ids * 20))

    # Then each was sent once and the others found it claimed
    assert sorted(set(outcomes)) == ["not_claimed", "sent"]
    assert outcomes.count("sent") == 2
    assert len(mailoutbox) == 1
    assert len(httpserver.log) == 1
