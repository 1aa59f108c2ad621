"""A real browser on the pages a new user checks before trusting the numbers.

The feature form, the usage explorer's CSV, the provider connection's test button (against
the local Admin API stub) and a failing alert channel.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.utils import timezone

from governance.audit import Actor
from governance.models import AuditEntry, Feature, Role, Tenant
from governance.notify import services as notify_services
from governance.notify.alerts import alert_raise
from governance.notify.models import Notification
from tests.browser.test_web_browser import sign_in, user_in
from tests.factories import FeatureFactory
from tests.test_web_pages import rollup
from usage.provider import services as provider_services
from usage.provider.stub import StubReports

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def acme():
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    user_in(tenant, Role.OWNER, "owner@acme.test")
    return tenant


def test_a_feature_saved_unchanged_keeps_its_default_model(live_server, new_page, acme):
    # Given a feature whose default model is an alias, as services send it
    FeatureFactory(tenant=acme, key="bot", name="Bot", default_model="claude-sonnet-4-5", max_tokens_cap=1024)
    page = new_page()
    sign_in(page, live_server.url, "owner@acme.test", "/t/acme/features/bot/")

    # When the form is saved as it opened
    assert page.locator("#id_default_model").input_value() == "claude-sonnet-4-5"
    page.get_by_role("button", name="Save changes").click()

    # Then the default model is still there, and nothing was changed
    assert page.get_by_text("Feature “Bot” saved.").is_visible()
    assert Feature.objects.get(tenant=acme, key="bot").default_model == "claude-sonnet-4-5"
    assert not AuditEntry.objects.filter(object_type="feature", action="update").exists()


def test_the_csv_of_the_default_view_has_rows(live_server, new_page, acme):
    # Given usage today, and the explorer opened with no filters
    feature = FeatureFactory(tenant=acme, key="bot")
    rollup(acme, feature, day=timezone.now().date(), cost_usd=2)
    page = new_page()
    sign_in(page, live_server.url, "owner@acme.test", "/t/acme/usage/")

    # When "Export CSV" is clicked
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()

    # Then the file has the default view's rows
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("day,feature,calls,cost_usd")
    assert len(lines) == 2 and ",bot,10,2.000000," in lines[1]


def test_the_provider_test_button_shows_the_stubs_answer(live_server, new_page, acme, httpserver, settings):
    # Given a connection holding the key of the local Admin API stub
    reports = StubReports()
    settings.ANTHROPIC_API_BASE_URL = reports.serve(httpserver)
    provider_services.provider_connection_save(tenant=acme, actor=Actor.system(), admin_key=reports.api_key,
                                               enabled=False)
    page = new_page()
    sign_in(page, live_server.url, "owner@acme.test", "/t/acme/provider/")
    assert page.get_by_text("Paused: syncing is switched off for this connection").first.is_visible()

    # When the owner presses "Test connection"
    page.get_by_role("button", name="Test connection").click()

    # Then the page shows what the stub answered, after exactly one call
    assert page.get_by_text("Connected: Anthropic answered the usage report for").is_visible()
    assert len(reports.requests) == 1


def test_a_failing_slack_channel_reads_failing(live_server, new_page, acme, httpserver, settings):
    # Given a Slack channel whose webhook answers 500, and an alert it could not deliver
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    httpserver.expect_request("/services/T1/B1/x", method="POST").respond_with_data("internal_error", status=500)
    channel = notify_services.channel_create(
        tenant=acme, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url=httpserver.url_for("/services/T1/B1/x"),
    )
    # (tasks run eagerly here: the delivery is retried at once until it gives up)
    alert_raise(tenant=acme, kind="drift", dedup_key="drift:1", title="Drift", body="")
    assert Notification.objects.get(channel=channel).status == "failed"

    # When the owner opens the channel, the alerts page and the dashboard
    page = new_page(390, 844)  # a phone
    sign_in(page, live_server.url, "owner@acme.test", f"/t/acme/alerts/channels/{channel.pk.hex}/")

    # Then each says the channel is failing, with what was given up on
    assert page.locator(".channel-health .badge.failing").inner_text() == "failing"
    assert page.get_by_text("1 given up").first.is_visible()
    assert page.get_by_text("Last error").is_visible()
    page.goto(f"{live_server.url}/t/acme/alerts/")
    assert page.locator("td .badge.failing").first.inner_text() == "failing"
    page.goto(f"{live_server.url}/t/acme/")
    assert page.get_by_text("is failing").first.is_visible()
