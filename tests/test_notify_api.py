"""The alert channel and alert history API: CRUD, the webhook URL never returned, tests, outsiders."""

from __future__ import annotations

import json

import pytest

from governance.audit import Actor
from governance.models import AuditEntry
from governance.notify import services
from governance.notify.alerts import alert_raise
from governance.notify.models import AlertChannel
from tests.test_api_foundation import assert_error

WEBHOOK = "https://hooks.slack.com/services/T0001/B0002/abcdefghijklmnopqrstWXYZ"


@pytest.fixture
def slack_channel(tenant):
    return services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack", slack_webhook_url=WEBHOOK
    )


def channel_url(channel: AlertChannel, suffix: str = "") -> str:
    return f"/api/v1/alert-channels/chan_{channel.pk.hex}{suffix}"


def test_create_email_channel(admin_api, tenant):
    response = admin_api.post(
        "/api/v1/alert-channels",
        {"name": "Finance", "kind": "email", "email_addresses": ["fin@acme.test"], "alert_kinds": ["threshold"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"].startswith("chan_")
    assert body["email_addresses"] == ["fin@acme.test"]
    assert body["alert_kinds"] == ["threshold"]
    assert body["enabled"] is True
    assert body["failing"] is False
    assert body["slack_webhook_url_hint"] is None
    assert AuditEntry.objects.filter(tenant=tenant, object_type="alertchannel", action="create").count() == 1


def test_new_channels_receive_every_kind_by_default(admin_api):
    response = admin_api.post(
        "/api/v1/alert-channels", {"name": "All", "kind": "email", "email_addresses": ["a@acme.test"]}, format="json"
    )
    assert response.json()["alert_kinds"] == ["threshold", "exhausted", "forecast", "drift", "sync_failing", "unpriced_usage", "overspent"]


def test_slack_webhook_url_is_never_returned(admin_api, tenant):
    # Given a Slack channel created through the API
    response = admin_api.post(
        "/api/v1/alert-channels", {"name": "#spend", "kind": "slack", "slack_webhook_url": WEBHOOK}, format="json"
    )
    assert response.status_code == 201, response.content
    channel_id = response.json()["id"]

    # Then no response, audit entry or database column shows the URL
    responses = [
        response,
        admin_api.get("/api/v1/alert-channels"),
        admin_api.get(f"/api/v1/alert-channels/{channel_id}"),
        admin_api.patch(f"/api/v1/alert-channels/{channel_id}", {"name": "#costs"}, format="json"),
    ]
    for r in responses:
        assert r.status_code == 200 or r.status_code == 201
        assert "abcdefghijklmnopqrst" not in r.content.decode()
    assert response.json()["slack_webhook_url_hint"] == "https://hooks.slack.com/…WXYZ"
    assert "abcdefghijklmnop" not in json.dumps(list(AuditEntry.objects.values("before", "after")))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT slack_webhook_url FROM notify_alertchannel")
        (stored,) = cursor.fetchone()
    assert "hooks.slack.com" not in stored
    assert AlertChannel.objects.get().slack_webhook_url == WEBHOOK


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "kind": "email"}, "email_addresses"),
        ({"name": "x", "kind": "email", "email_addresses": ["not-an-address"]}, "email_addresses"),
        ({"name": "x", "kind": "email", "email_addresses": "a@b.test"}, "email_addresses"),
        ({"name": "x", "kind": "slack"}, "slack_webhook_url"),
        ({"name": "x", "kind": "slack", "slack_webhook_url": "http://10.0.0.1/hook"}, "slack_webhook_url"),
        ({"name": "x", "kind": "slack", "slack_webhook_url": "https://example.com/services/x"}, "slack_webhook_url"),
        ({"name": "x", "kind": "pager"}, "kind"),
        ({"name": "x", "kind": "email", "email_addresses": ["a@b.test"], "alert_kinds": ["party"]}, "alert_kinds"),
        ({"name": "x", "kind": "email", "email_addresses": ["a@b.test"], "colour": "red"}, "colour"),
        ({"kind": "email", "email_addresses": ["a@b.test"]}, "name"),
    ],
)
def test_invalid_channels_are_400_naming_the_field(admin_api, body, field):
    error = assert_error(admin_api.post("/api/v1/alert-channels", body, format="json"), 400, "invalid_request")
    assert field in error["details"]
    assert not AlertChannel.objects.exists()


def test_non_object_body_is_400(admin_api):
    assert_error(admin_api.post("/api/v1/alert-channels", [1, 2], format="json"), 400, "invalid_request")
    assert_error(
        admin_api.post("/api/v1/alert-channels", "{nope", content_type="application/json"), 400, "invalid_request"
    )


def test_patch_changes_kinds_and_disables(admin_api, slack_channel, tenant):
    response = admin_api.patch(
        channel_url(slack_channel), {"alert_kinds": ["exhausted"], "enabled": False}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["alert_kinds"] == ["exhausted"]
    assert response.json()["enabled"] is False
    entry = AuditEntry.objects.get(tenant=tenant, object_type="alertchannel", action="update")
    assert entry.before["enabled"] is True and entry.after["enabled"] is False


def test_kind_cannot_change(admin_api, slack_channel):
    error = assert_error(admin_api.patch(channel_url(slack_channel), {"kind": "email"}, format="json"), 400, "invalid_request")
    assert "kind" in error["details"]


def test_new_webhook_url_clears_failing(admin_api, slack_channel):
    AlertChannel.objects.filter(pk=slack_channel.pk).update(failing=True, last_error="Slack answered 404")
    new_url = "https://hooks.slack.com/services/T0001/B0003/newsecretnewsecret1234"
    response = admin_api.patch(channel_url(slack_channel), {"slack_webhook_url": new_url}, format="json")
    assert response.status_code == 200
    assert response.json()["failing"] is False
    assert response.json()["last_error"] == ""
    assert response.json()["slack_webhook_url_hint"].endswith("1234")


def test_delete_channel(admin_api, slack_channel, tenant):
    response = admin_api.delete(channel_url(slack_channel))
    assert response.status_code == 204
    assert not AlertChannel.objects.exists()
    assert AuditEntry.objects.filter(tenant=tenant, object_type="alertchannel", action="delete").exists()
    assert_error(admin_api.get(channel_url(slack_channel)), 404, "not_found")


@pytest.mark.parametrize("channel_id", ["nope", "chan_", "chan_zz", "bud_" + "0" * 32, "chan_" + "0" * 32])
def test_unknown_channel_ids_are_404(admin_api, channel_id):
    assert_error(admin_api.get(f"/api/v1/alert-channels/{channel_id}"), 404, "not_found")
    assert_error(admin_api.post(f"/api/v1/alert-channels/{channel_id}/test"), 404, "not_found")


def test_outsider_sees_404_and_changes_nothing(outsider_api, slack_channel):
    assert_error(outsider_api.get(channel_url(slack_channel)), 404, "not_found")
    assert_error(outsider_api.patch(channel_url(slack_channel), {"name": "pwned"}, format="json"), 404, "not_found")
    assert_error(outsider_api.delete(channel_url(slack_channel)), 404, "not_found")
    assert_error(outsider_api.post(channel_url(slack_channel, "/test")), 404, "not_found")
    assert outsider_api.get("/api/v1/alert-channels").json()["results"] == []
    assert outsider_api.get("/api/v1/alerts").json()["results"] == []
    slack_channel.refresh_from_db()
    assert slack_channel.name == "#spend"


def test_service_keys_are_forbidden(api, slack_channel):
    assert_error(api.get("/api/v1/alert-channels"), 403, "forbidden")
    assert_error(api.post("/api/v1/alert-channels", {}, format="json"), 403, "forbidden")
    assert_error(api.get(channel_url(slack_channel)), 403, "forbidden")
    assert_error(api.post(channel_url(slack_channel, "/test")), 403, "forbidden")
    assert_error(api.get("/api/v1/alerts"), 403, "forbidden")


def test_no_key_is_401(client, db):
    assert_error(client.get("/api/v1/alert-channels"), 401, "unauthenticated")
    assert_error(client.get("/api/v1/alerts"), 401, "unauthenticated")


def test_test_send_delivers_and_clears_failing(admin_api, tenant, settings, httpserver):
    # Given a failing Slack channel whose webhook now works
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    channel = services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url=httpserver.url_for("/services/T1/B1/tok"),
    )
    AlertChannel.objects.filter(pk=channel.pk).update(failing=True, last_error="Slack answered 404: no_service")
    httpserver.expect_oneshot_request("/services/T1/B1/tok", method="POST").respond_with_data("ok")

    # When the admin sends a test
    response = admin_api.post(channel_url(channel, "/test"))

    # Then Slack got a message and the channel is healthy again
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["delivered"] is True
    assert body["error"] is None
    assert body["channel"]["failing"] is False
    assert body["channel"]["health"] == "ok"
    assert body["channel"]["last_delivered_at"] is not None
    assert httpserver.log[0][0].get_json()["text"].startswith("Test alert from Comptroller")


def test_test_send_reports_a_dead_webhook(admin_api, tenant, settings, httpserver):
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    channel = services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url=httpserver.url_for("/services/T1/B1/gone"),
    )
    httpserver.expect_request("/services/T1/B1/gone").respond_with_data("no_service", status=404)

    body = admin_api.post(channel_url(channel, "/test")).json()

    assert body["delivered"] is False
    assert body["permanent"] is True
    assert body["error"] == "Slack answered 404: no_service"
    assert body["channel"]["failing"] is True
    assert body["channel"]["health"] == "failing"
    assert body["channel"]["failing_since"] is not None
    assert "/services/T1/B1/gone" not in json.dumps(body)
    assert len(httpserver.log) == 1


def test_test_send_by_email(admin_api, tenant, mailoutbox):
    channel = services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email", email_addresses=["fin@acme.test"]
    )
    body = admin_api.post(channel_url(channel, "/test")).json()
    assert body["delivered"] is True
    assert [m.to for m in mailoutbox] == [["fin@acme.test"]]


def test_alert_history_with_delivery_status(admin_api, tenant, mailoutbox, django_capture_on_commit_callbacks):
    channel = services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email", email_addresses=["fin@acme.test"]
    )
    with django_capture_on_commit_callbacks(execute=True):
        alert_raise(
            tenant=tenant, kind="sync_failing", dedup_key="sync:1", title="Provider sync failing",
            body="401 from the Admin API", data={"lost_nano": 1_500_000_000},
        )

    response = admin_api.get("/api/v1/alerts")

    assert response.status_code == 200
    [alert] = response.json()["results"]
    assert alert["id"].startswith("alert_")
    assert alert["kind"] == "sync_failing"
    assert alert["title"] == "Provider sync failing"
    assert alert["budget"] is None
    assert alert["details"] == {"lost_usd": "1.500000"}
    [delivery] = alert["deliveries"]
    assert delivery["channel"] == f"chan_{channel.pk.hex}"
    assert delivery["status"] == "sent"
    assert delivery["attempts"] == 1
    assert admin_api.get("/api/v1/alerts?kind=threshold").json()["results"] == []
    assert len(admin_api.get("/api/v1/alerts?kind=sync_failing").json()["results"]) == 1


@pytest.mark.parametrize("query", ["kind=party", "limit=0", "limit=x", "limit=501", "budget=nope", "colour=red"])
def test_bad_alert_queries_are_400(admin_api, query):
    assert_error(admin_api.get(f"/api/v1/alerts?{query}"), 400, "invalid_request")
