"""Web pages for alert channels, alert history, the provider connection and the lever board."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from governance.audit import Actor
from governance.models import Membership, Role
from governance.notify import services as notify_services
from governance.notify.models import AlertChannel
from tests.test_web_pages import member, rollup
from usage.provider.models import ProviderConnection


@pytest.fixture
def channel(tenant):
    return notify_services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Ops", kind="email", email_addresses=["ops@acme.test"]
    )


def test_admin_creates_an_email_channel_and_sends_a_test(client, tenant):
    client.force_login(member(tenant, Role.ADMIN))
    response = client.post("/t/acme/alerts/channels/new/", {
        "name": "Finance", "kind": "email", "email_addresses": "a@acme.test\nb@acme.test",
        "alert_kinds": ["threshold", "forecast"], "enabled": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    channel = AlertChannel.objects.get(tenant=tenant, name="Finance")
    assert channel.email_addresses == ["a@acme.test", "b@acme.test"]
    response = client.post(f"/t/acme/alerts/channels/{channel.pk.hex}/test/", follow=True)
    assert "Test message sent to “Finance”" in response.content.decode()
    assert mail.outbox[-1].to == ["a@acme.test", "b@acme.test"]
    detail = client.get(f"/t/acme/alerts/channels/{channel.pk.hex}/").content.decode()
    assert "Delivery history" in detail and "Send test" in detail


def test_channel_form_errors_are_next_to_fields(client, tenant):
    client.force_login(member(tenant, Role.ADMIN))
    response = client.post("/t/acme/alerts/channels/new/", {
        "name": "Bad", "kind": "email", "email_addresses": "not-an-address", "enabled": "on",
    })
    assert response.status_code == 200
    assert 'id_email_addresses_error">' in response.content.decode()
    assert "Not an email address: not-an-address." in response.content.decode()
    slack = client.post("/t/acme/alerts/channels/new/", {
        "name": "Slack", "kind": "slack", "slack_webhook_url": "http://169.254.169.254/", "enabled": "on",
    })
    assert "Give a Slack incoming-webhook URL" in slack.content.decode()


def test_viewer_sees_alerts_but_cannot_test_or_edit_channels(client, tenant, channel):
    client.force_login(member(tenant, Role.VIEWER))
    assert client.get("/t/acme/alerts/").status_code == 200
    assert client.get(f"/t/acme/alerts/channels/{channel.pk.hex}/").status_code == 200
    assert client.post(f"/t/acme/alerts/channels/{channel.pk.hex}/test/").status_code == 403
    assert client.get(f"/t/acme/alerts/channels/{channel.pk.hex}/edit/").status_code == 403
    assert mail.outbox == []


def test_outsider_gets_404_for_channels(client, other_tenant, channel):
    client.force_login(member(other_tenant, Role.OWNER))
    for url in (f"/t/acme/alerts/channels/{channel.pk.hex}/", f"/t/globex/alerts/channels/{channel.pk.hex}/"):
        assert client.get(url).status_code == 404
    assert client.post(f"/t/globex/alerts/channels/{channel.pk.hex}/delete/").status_code == 404
    assert AlertChannel.objects.filter(pk=channel.pk).exists()


def test_only_owners_connect_the_provider_and_the_key_is_never_shown(client, tenant, feature):
    admin = member(tenant, Role.ADMIN)
    client.force_login(admin)
    assert client.get("/t/acme/provider/").status_code == 200
    secret = "sk-ant-admin01-abcdefghijklmnopqrstuvwxyz-WXYZ"
    assert client.post("/t/acme/provider/save/", {"admin_key": secret, "enabled": "on"}).status_code == 403
    Membership.objects.filter(user=admin).update(role=Role.OWNER)
    response = client.post("/t/acme/provider/save/", {"admin_key": secret, "enabled": "on"})
    assert response.status_code == 302
    connection = ProviderConnection.objects.get(tenant=tenant)
    assert connection.admin_key == secret
    page = client.get("/t/acme/provider/").content.decode()
    assert "…WXYZ" in page and secret not in page
    # Saving again without a key keeps the saved one.
    client.post("/t/acme/provider/save/", {"admin_key": "", "enabled": "on"})
    connection.refresh_from_db()
    assert connection.admin_key == secret


def test_the_provider_form_refuses_what_cannot_be_anthropics(client, tenant, feature):
    client.force_login(member(tenant, Role.OWNER))
    for data, message in (
        ({"admin_key": "abc"}, "looks like sk-ant-admin01-"),
        ({"admin_key": "sk-ant-api03-abcdefghijklmnop"}, "That is a regular API key (sk-ant-api…)"),
        ({"admin_key": "sk-ant-admin01-abcdefghijkl", "workspace_ids": "<script>"},
         "is not an Anthropic workspace id"),
    ):
        page = client.post("/t/acme/provider/save/", {**data, "enabled": "on"}).content.decode()
        assert message in page, page[:3000]
        assert "<script>" not in page.split("<main")[-1].replace("&lt;script&gt;", "")
    assert not ProviderConnection.objects.exists()


def test_the_test_button_shows_anthropics_answer_and_paused_says_why(client, tenant, httpserver, settings):
    from usage.provider import services as provider_services
    from usage.provider.stub import StubReports

    # Given a paused connection holding the stub's key
    reports = StubReports()
    settings.ANTHROPIC_API_BASE_URL = reports.serve(httpserver)
    provider_services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=reports.api_key,
                                               enabled=False)
    client.force_login(member(tenant, Role.OWNER))
    page = client.get("/t/acme/provider/").content.decode()
    assert "Paused: syncing is switched off for this connection" in page
    assert "Test connection" in page

    # When the owner presses "Test connection"
    response = client.post("/t/acme/provider/test/", follow=True)

    # Then the page shows what Anthropic (the stub) answered, after one call
    assert "Connected: Anthropic answered the usage report for" in response.content.decode()
    assert len(reports.requests) == 1
    # and the dashboard's badge says why it is paused
    assert "Paused: syncing is switched off" in client.get("/t/acme/").content.decode()


def test_lever_board_page_shows_each_feature(client, tenant, feature):
    client.force_login(member(tenant, Role.VIEWER))
    rollup(tenant, feature, day=timezone.now().date() - timedelta(days=1), cost_usd=40)
    page = client.get("/t/acme/levers/").content.decode()
    assert feature.name in page and "$40.00" in page
    bad = client.get("/t/acme/levers/", {"start": "2026-03-01", "end": "2026-01-01"})
    assert "The end must not be before the start." in bad.content.decode()
