"""Delivery of alerts: email and Slack, once per channel, retries with backoff, permanent failures."""

from __future__ import annotations

import pytest
from django.core import mail

from governance.audit import Actor
from governance.notify import services
from governance.notify.models import Alert, Notification, NotificationStatus

SLACK_PATH = "/services/T000/B000/secret-token-abcd"


@pytest.fixture
def slack_allowed(settings, httpserver):
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    return httpserver


@pytest.fixture
def email_channel(tenant):
    return services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email",
        email_addresses=["finance@acme.test", "cto@acme.test"],
    )


@pytest.fixture
def slack_channel(tenant, slack_allowed):
    return services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url=slack_allowed.url_for(SLACK_PATH),
    )


def raise_drift(tenant, key="drift:2026-11-20"):
    return services.alert_raise(
        tenant=tenant, kind="drift", dedup_key=key, title="Metered spend drifts from the provider's",
        body="Provider reports $12.00 more than was metered on 2026-11-20.",
        data={"fields": [["Day", "2026-11-20"], ["Drift", "$12.00"]]},
    )


def test_alert_raise_records_once_and_emails_each_channel_once(tenant, email_channel, django_capture_on_commit_callbacks):
    # Given an email channel
    # When the same alert is raised twice
    with django_capture_on_commit_callbacks(execute=True):
        first = raise_drift(tenant)
        second = raise_drift(tenant)

    # Then it is recorded once and one email goes to the channel's addresses
    assert first is not None and second is None
    assert Alert.objects.filter(tenant=tenant).count() == 1
    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["finance@acme.test", "cto@acme.test"]
    assert "Metered spend drifts" in email.subject
    assert "Drift: $12.00" in email.body
    html = email.alternatives[0][0]
    assert "<th" in html and "$12.00" in html
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.SENT
    assert notification.attempts == 1
    assert notification.duration_ms is not None


def test_channels_not_subscribed_or_disabled_get_nothing(tenant, django_capture_on_commit_callbacks):
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Thresholds only", kind="email",
        email_addresses=["a@acme.test"], alert_kinds=["threshold"],
    )
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Off", kind="email",
        email_addresses=["b@acme.test"], enabled=False,
    )
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    assert mail.outbox == []
    assert not Notification.objects.exists()


def test_slack_gets_a_block_kit_message(tenant, slack_channel, httpserver, django_capture_on_commit_callbacks):
    # Given a Slack channel whose webhook answers ok
    httpserver.expect_oneshot_request(SLACK_PATH, method="POST").respond_with_data("ok")

    # When an alert is raised
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)

    # Then Slack receives one Block Kit message with the facts and a link
    httpserver.check_assertions()
    assert len(httpserver.log) == 1
    payload = httpserver.log[0][0].get_json()
    assert payload["text"].startswith("Metered spend drifts")
    kinds = [b["type"] for b in payload["blocks"]]
    assert kinds[0] == "header"
    assert "actions" in kinds
    fields = [f["text"] for b in payload["blocks"] if "fields" in b for f in b["fields"]]
    assert "*Drift*\n$12.00" in fields
    button = next(b for b in payload["blocks"] if b["type"] == "actions")["elements"][0]
    assert button["url"] == "http://127.0.0.1:8000/t/acme/"
    assert Notification.objects.get().status == NotificationStatus.SENT
