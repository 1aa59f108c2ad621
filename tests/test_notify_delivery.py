"""Delivery of alerts: email and Slack, once per channel, retries with backoff, permanent failures."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from governance.audit import Actor
from governance.notify import services
from governance.notify.alerts import alert_raise
from governance.notify.models import Alert, AlertChannel, Notification, NotificationStatus

SLACK_PATH = "/services/T000/B000/secret-token-abcd"


@pytest.fixture
def slack_allowed(settings, httpserver):
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    return httpserver


@pytest.fixture
def celery_disabled(monkeypatch):
    """Stop enqueued tasks from running, as if no worker were listening."""
    from governance import queue

    monkeypatch.setattr(queue, "enqueue", lambda task, args, countdown=None: True)


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
    return alert_raise(
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


def test_slack_500_twice_then_200_delivers_once_after_three_attempts(
    tenant, slack_channel, httpserver, django_capture_on_commit_callbacks
):
    # Given a Slack webhook that fails twice with 500 and then accepts
    for status in (500, 500, 200):
        httpserver.expect_ordered_request(SLACK_PATH, method="POST").respond_with_data(
            "ok" if status == 200 else "internal_error", status=status
        )

    # When an alert is raised (retries run at once: tasks are eager in tests)
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)

    # Then Slack got three requests, the delivery is sent once, with three attempts recorded
    httpserver.check_assertions()
    assert len(httpserver.log) == 3
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.SENT
    assert notification.attempts == 3
    assert notification.error == ""
    slack_channel.refresh_from_db()
    assert slack_channel.failing is False
    assert slack_channel.last_error == ""


def test_slack_404_marks_the_channel_failing_without_retrying(
    tenant, slack_channel, httpserver, django_capture_on_commit_callbacks
):
    # Given a deleted Slack webhook
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("no_service", status=404)

    # When an alert is raised and the sweep runs afterwards
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    from governance.notify.tasks import deliver_pending

    deliver_pending.delay()

    # Then Slack was asked once, the delivery failed and the channel says why
    assert len(httpserver.log) == 1
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.FAILED
    assert notification.attempts == 1
    assert notification.error == "Slack answered 404: no_service"
    slack_channel.refresh_from_db()
    assert slack_channel.failing is True
    assert slack_channel.last_error == "Slack answered 404: no_service"
    assert slack_channel.last_error_at is not None


def test_slack_invalid_token_is_permanent(tenant, slack_channel, httpserver, django_capture_on_commit_callbacks):
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("invalid_token", status=403)
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    assert len(httpserver.log) == 1
    assert Notification.objects.get().status == NotificationStatus.FAILED
    slack_channel.refresh_from_db()
    assert slack_channel.failing is True


def test_transient_failures_give_up_after_max_attempts(
    tenant, slack_channel, httpserver, django_capture_on_commit_callbacks
):
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("busy", status=503)
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    notification = Notification.objects.get()
    assert len(httpserver.log) == services.MAX_ATTEMPTS
    assert notification.attempts == services.MAX_ATTEMPTS
    assert notification.status == NotificationStatus.FAILED
    assert notification.error.startswith(f"Gave up after {services.MAX_ATTEMPTS} attempts: Slack answered 503")
    slack_channel.refresh_from_db()
    assert slack_channel.failing is True


def test_unreachable_slack_is_retried_later(tenant, settings, django_capture_on_commit_callbacks, celery_disabled):
    # Given a channel whose host refuses connections, and no worker to run retries
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = ["http://127.0.0.1:"]
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url="http://127.0.0.1:9/services/T/B/x",
    )
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    notification = Notification.objects.get()

    # When one delivery attempt runs
    outcome = services.notification_deliver(notification_id=notification.pk)

    # Then it is pending again with a backoff, and says why
    notification.refresh_from_db()
    assert outcome.status == "retry"
    assert outcome.retry_in == services.BACKOFF_BASE_SECONDS
    assert notification.status == NotificationStatus.PENDING
    assert notification.attempts == 1
    assert notification.error.startswith("Could not reach Slack")
    assert "/services/T/B/x" not in notification.error


def test_a_claimed_delivery_is_not_sent_twice(tenant, email_channel, django_capture_on_commit_callbacks, celery_disabled):
    # Given a pending delivery
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    notification = Notification.objects.get()

    # When two workers race for it: the first claims it, the second finds it taken
    assert services.notification_claim(notification_id=notification.pk) is True
    assert services.notification_deliver(notification_id=notification.pk).status == "not_claimed"

    # Then nothing was sent by the second, and a sent delivery is never sent again
    assert mail.outbox == []
    Notification.objects.filter(pk=notification.pk).update(status=NotificationStatus.PENDING)
    assert services.notification_deliver(notification_id=notification.pk).status == "sent"
    assert services.notification_deliver(notification_id=notification.pk).status == "not_claimed"
    assert len(mail.outbox) == 1


def test_abandoned_claims_are_taken_over_by_the_sweep(tenant, email_channel, django_capture_on_commit_callbacks, celery_disabled):
    # Given a delivery claimed by a worker that then died
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    notification = Notification.objects.get()
    services.notification_claim(notification_id=notification.pk)
    Notification.objects.filter(pk=notification.pk).update(
        claimed_until=timezone.now() - timedelta(seconds=1)
    )

    # When the sweep runs
    due = services.notifications_due_claim()
    assert due == [notification.pk]
    assert services.notification_deliver(notification_id=notification.pk).status == "sent"

    # Then the email went out once
    assert len(mail.outbox) == 1
    assert Notification.objects.get().attempts == 2


def test_disabled_channel_skips_its_pending_deliveries(tenant, email_channel, django_capture_on_commit_callbacks, celery_disabled):
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    AlertChannel.objects.filter(pk=email_channel.pk).update(enabled=False)
    notification = Notification.objects.get()
    assert services.notification_deliver(notification_id=notification.pk).status == "skipped"
    assert mail.outbox == []
    assert Notification.objects.get().status == NotificationStatus.SKIPPED


# --- A real SMTP server -----------------------------------------------------------------------


class RefusingHandler:
    """Accept mail for everyone except addresses at nowhere.test (550, like a real server)."""

    def __init__(self):
        self.messages = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@nowhere.test"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 Message accepted"


@pytest.fixture
def smtp_server(settings):
    from aiosmtpd.controller import Controller

    handler = RefusingHandler()
    with socket.socket() as probe:  # aiosmtpd cannot take port 0: find a free one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    yield handler
    controller.stop()


def test_email_over_real_smtp_is_plain_text_and_html(tenant, email_channel, smtp_server, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)

    [envelope] = smtp_server.messages
    assert sorted(envelope.rcpt_tos) == ["cto@acme.test", "finance@acme.test"]
    raw = envelope.content.decode()
    assert "multipart/alternative" in raw
    assert "text/plain" in raw and "text/html" in raw
    assert Notification.objects.get().status == NotificationStatus.SENT


def test_refused_address_is_permanent(tenant, smtp_server, django_capture_on_commit_callbacks):
    channel = services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Gone", kind="email", email_addresses=["ghost@nowhere.test"]
    )
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)

    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.FAILED
    assert notification.attempts == 1
    assert "ghost@nowhere.test" in notification.error
    channel.refresh_from_db()
    assert channel.failing is True
    assert smtp_server.messages == []


def test_unreachable_smtp_is_transient(tenant, email_channel, settings, django_capture_on_commit_callbacks, celery_disabled):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    outcome = services.notification_deliver(notification_id=Notification.objects.get().pk)
    assert outcome.status == "retry"
    assert Notification.objects.get().error.startswith("Could not reach the mail server")


def test_slack_rate_limit_waits_as_long_as_slack_asks(tenant, slack_channel, httpserver, django_capture_on_commit_callbacks, celery_disabled):
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data(
        "rate_limited", status=429, headers={"Retry-After": "300"}
    )
    with django_capture_on_commit_callbacks(execute=True):
        raise_drift(tenant)
    outcome = services.notification_deliver(notification_id=Notification.objects.get().pk)
    assert outcome.status == "retry"
    assert outcome.retry_in == 300
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.PENDING
    assert notification.error == "Slack answered 429: rate_limited"


# --- channel health ----------------------------------------------------------------------


def test_a_slack_channel_answering_500_reads_failing_from_its_first_error_until_one_gets_through(
    client, tenant, slack_channel, httpserver, django_capture_on_commit_callbacks, celery_disabled
):
    from governance.notify.selectors import channel_statuses
    from tests.test_web_pages import member

    # Given a Slack channel that has never been tried
    assert slack_channel.health == "never_tried"

    # When Slack answers 500 to the first attempt of seven alerts (retries pending)
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("internal_error", status=500)
    with django_capture_on_commit_callbacks(execute=True):
        ids = [raise_drift(tenant, key=f"drift:{n}").notifications.get().pk for n in range(7)]
    for pk in ids:
        services.notification_deliver(notification_id=pk)

    # Then the channel reads "failing" since the first error, with seven deliveries waiting
    [status] = channel_statuses(tenant=tenant)
    assert status.health == "failing"
    assert status.waiting == 7
    assert "500" in status.last_error
    first_error = status.since
    client.force_login(member(tenant, "owner"))
    page = client.get(f"/t/{tenant.slug}/alerts/channels/{slack_channel.pk.hex}/").content.decode()
    assert "failing" in page and "7 waiting" in page and "Last error" in page
    assert ">ok<" not in page
    dashboard = client.get(f"/t/{tenant.slug}/").content.decode()
    assert "Alert channel “<a" in dashboard and "is failing" in dashboard

    # When Slack recovers and the next retry goes through
    httpserver.clear()
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    Notification.objects.filter(pk=ids[0]).update(next_attempt_at=timezone.now())
    assert services.notification_deliver(notification_id=ids[0]).status == "sent"

    # Then it reads "ok" again, the error cleared
    [status] = channel_statuses(tenant=tenant)
    assert (status.health, status.last_error, status.waiting) == ("ok", "", 6)
    assert status.since >= first_error
    assert "is failing" not in client.get(f"/t/{tenant.slug}/").content.decode()
