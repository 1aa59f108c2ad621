"""With the broker down, commits still succeed, and the beat tasks deliver the alerts once it is back."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from budgets import tasks as budget_tasks
from governance import queue
from governance.audit import Actor
from governance.celery import app as celery_app
from governance.notify import services, tasks
from governance.notify.models import Alert, Notification, NotificationStatus
from tests.factories import BudgetFactory

ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 1000}
USAGE = {"input_tokens": 1000, "output_tokens": 400}  # $0.009
CALL_NANO = 9_000_000
SLACK_PATH = "/services/T000/B000/alerts"


def _reset_broker_connections():
    # Drop (do not close) the pools: kombu keeps a registry of them keyed by connection URL,
    # and a closed one would be handed back to the next test.
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    queue.broker_backoff_reset()


@pytest.fixture
def broker():
    """A switch for the Celery broker: a Redis URL nobody listens on while down, eager tasks once back."""

    class Broker:
        def down(self):
            celery_app.conf.CELERY_TASK_ALWAYS_EAGER = False
            celery_app.conf.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
            celery_app.conf.CELERY_BROKER_CONNECTION_TIMEOUT = 0.5
            _reset_broker_connections()

        def back(self):
            celery_app.conf.CELERY_TASK_ALWAYS_EAGER = True
            celery_app.conf.CELERY_BROKER_URL = saved_url
            celery_app.conf.CELERY_BROKER_CONNECTION_TIMEOUT = saved_timeout
            _reset_broker_connections()

    saved_url = celery_app.conf.CELERY_BROKER_URL
    saved_timeout = celery_app.conf.get("CELERY_BROKER_CONNECTION_TIMEOUT", 4)
    switch = Broker()
    yield switch
    switch.back()


@pytest.fixture
def channels(tenant, settings, httpserver):
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email", email_addresses=["fin@acme.test"]
    )
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url=httpserver.url_for(SLACK_PATH),
    )
    return httpserver


def call(api, capture):
    with capture(execute=True):
        hold = api.post("/api/v1/allowances", ASK, format="json")
    assert hold.status_code == 201, hold.content
    with capture(execute=True):
        return api.post(f"/api/v1/allowances/{hold.json()['id']}/commit", {"usage": USAGE}, format="json")


def test_commits_succeed_with_the_broker_down_and_the_beat_delivers_later(
    tenant, feature, api, channels, broker, mailoutbox, django_capture_on_commit_callbacks
):
    # Given a budget two calls from 100 %, and a dead broker
    BudgetFactory(tenant=tenant, name="Support", scope="tenant", limit_nano=2 * CALL_NANO, enforcement="alert")
    broker.down()

    # When calls cross 50 % and 100 %
    responses = [call(api, django_capture_on_commit_callbacks) for _ in range(2)]

    # Then the commits succeeded, the alerts are recorded, and nothing was sent yet
    assert [r.status_code for r in responses] == [200, 200]
    assert sorted(Alert.objects.values_list("threshold", flat=True)) == [50, 100]
    assert set(Notification.objects.values_list("status", flat=True)) == {NotificationStatus.PENDING}
    assert mailoutbox == []
    assert channels.log == []

    # When the broker is back and the beat tasks run (the sweep waits a minute for queued tasks)
    broker.back()
    with time_machine.travel(timezone.now() + timedelta(minutes=2)):
        with django_capture_on_commit_callbacks(execute=True):
            budget_tasks.evaluate_budgets.delay()
        tasks.deliver_pending.delay()
        tasks.deliver_pending.delay()

    # Then each alert reached each channel exactly once
    month = f"{timezone.now():%B}"
    assert sorted(m.subject for m in mailoutbox) == [
        f"[Comptroller] Support has reached 100% of its limit in {month}",
        f"[Comptroller] Support has used 50% of its limit in {month}",
    ]
    assert len(channels.log) == 2
    assert Notification.objects.filter(status=NotificationStatus.SENT).count() == 4


def test_alerts_missed_entirely_are_raised_by_the_beat(
    tenant, feature, api, channels, broker, mailoutbox, django_capture_on_commit_callbacks
):
    # Given spend recorded while nothing ran after commit (e.g. a worker crashed mid-evaluation)
    BudgetFactory(tenant=tenant, name="Support", scope="tenant", limit_nano=2 * CALL_NANO, enforcement="alert")
    with django_capture_on_commit_callbacks(execute=False):
        hold = api.post("/api/v1/allowances", ASK, format="json").json()
        assert api.post(f"/api/v1/allowances/{hold['id']}/commit", {"usage": USAGE}, format="json").status_code == 200
    assert not Alert.objects.exists()

    # When the beat task evaluates budgets
    with django_capture_on_commit_callbacks(execute=True):
        budget_tasks.evaluate_budgets.delay()

    # Then the 50 % alert goes out once per channel
    assert Alert.objects.get().threshold == 50
    assert len(mailoutbox) == 1
    assert len(channels.log) == 1


def test_a_web_process_finds_a_task_whose_module_nothing_imported_yet():
    # Celery registers a task when its module is imported; a worker imports them all at start-up,
    # a web process does not. Enqueueing by name must not read that as "the broker is down".
    import subprocess
    import sys

    script = (
        "import sys, django; django.setup()\n"
        "assert 'budgets.tasks' not in sys.modules\n"
        "from governance.queue import task_named\n"
        "print(task_named('budgets.tasks.evaluate_windows').name)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "budgets.tasks.evaluate_windows"
