"""The web UI shows spend no hold covered: a badge and a filter in the usage explorer, a line on the budget page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from governance.audit import Actor
from governance.models import Role
from governance.services import api_key_create
from tests.conftest import make_client
from tests.factories import BudgetFactory, FeatureFactory
from tests.test_web_pages import member
from usage.models import NANO, UsageEvent

# 1,000 input and 500 output tokens of Sonnet 4.5: $0.0105 a call.
CALL = {"input_tokens": 1000, "output_tokens": 500}


def report(api, request_id: str, *, feature: str = "support-bot", usage=None, **extra):
    body = {"feature": feature, "model": "claude-sonnet-4-5-20250929", "request_id": request_id,
            "usage": usage or CALL, **extra}
    response = api.post("/api/v1/usage", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["results"][0]


@pytest.fixture
def as_viewer(client, tenant):
    client.force_login(member(tenant, Role.VIEWER))
    return client


@pytest.fixture
def overrun(api, tenant, feature):
    """A $0.02 block budget on support-bot, and two calls reported without a hold: the second went past it."""
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, name="Support monthly",
                           limit_nano=NANO // 50)
    FeatureFactory(tenant=tenant, key="classifier")
    assert report(api, "msg_1")["off_hold"] is False
    assert report(api, "msg_2")["off_hold"] is True
    assert report(api, "msg_3", feature="classifier")["off_hold"] is False  # no budget counts it
    return budget


def rows_of(page: str) -> dict[str, str]:
    """Return each explorer row's HTML by the feature key in its first cell."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<tr><td class="mono">([\w-]+)</td>.*?</tr>', page, re.S)}


def test_the_explorer_marks_rows_with_spend_past_a_limit_and_filters_to_it(as_viewer, overrun):
    # When the explorer groups the month by feature
    page = as_viewer.get("/t/acme/usage/", {"group_by": ["feature"]}).content.decode()

    # Then support-bot's row (2 calls) carries a badge for its one call past the limit, classifier's none
    rows = rows_of(page)
    assert ">1 past limit</a> 2</td>" in rows["support-bot"]
    assert 'title="1 of these calls ($0.0105) spent past a limit without a hold"' in rows["support-bot"]
    assert "past limit" not in rows["classifier"]
    assert 'href="?group_by=feature&amp;off_hold=on"' in page

    # When only that spend is asked for
    only = as_viewer.get("/t/acme/usage/", {"group_by": ["feature"], "off_hold": "on"}).content.decode()

    # Then the table holds the one call and its cost, and nothing of classifier's
    assert "Spend past a limit without a hold in UTC" in only
    rows = rows_of(only)
    assert set(rows) == {"support-bot"}
    assert '<td class="num">1</td><td class="num">$0.0105</td>' in rows["support-bot"]
    assert re.search(r'<input type="checkbox" name="off_hold"[^>]* checked>', only)

    # And its CSV export is that same row
    lines = as_viewer.get("/t/acme/usage/", {"group_by": ["feature"], "off_hold": "on", "format": "csv"}
                          ).content.decode().splitlines()
    assert lines[1:] == ["support-bot,1,0.010500,1000,500,0,0,0,0,0"]


def test_the_default_view_links_to_the_same_view_filtered(as_viewer, overrun):
    page = as_viewer.get("/t/acme/usage/").content.decode()
    assert 'href="?group_by=day&amp;group_by=feature&amp;off_hold=on"' in page
    only = as_viewer.get("/t/acme/usage/?group_by=day&group_by=feature&off_hold=on").content.decode()
    # grouped by day, then feature: today's support-bot row, with the one call
    assert re.search(r'<td class="mono">support-bot</td>\s*<td class="num">1</td><td class="num">\$0.0105</td>', only)
    assert "classifier" not in only.split("<tbody>")[1]


def test_the_filter_never_shows_another_tenants_spend(client, api, other_tenant, overrun):
    # Given another tenant whose only call went past its budget
    theirs = FeatureFactory(tenant=other_tenant, key="support-bot")
    BudgetFactory(tenant=other_tenant, scope="feature", feature=theirs, limit_nano=1)
    _, secret = api_key_create(tenant=other_tenant, actor=Actor.system(), name="svc")
    assert report(make_client(secret), "msg_theirs")["off_hold"] is True

    # When its viewer filters its explorer, it sees its own call only
    client.force_login(member(other_tenant, Role.VIEWER))
    only = client.get("/t/globex/usage/", {"group_by": ["feature"], "off_hold": "on"}).content.decode()
    assert '<td class="num">1</td><td class="num">$0.0105</td>' in rows_of(only)["support-bot"]
    assert UsageEvent.objects.filter(off_hold=True).count() == 2


def test_a_range_without_such_spend_says_so(as_viewer, tenant, feature):
    page = as_viewer.get("/t/acme/usage/", {"group_by": ["feature"], "off_hold": "on"}).content.decode()
    assert "No call in this range spent past a limit without a hold." in page


def test_the_budget_page_counts_the_windows_calls_spent_past_the_limit_without_a_hold(api, as_viewer, overrun):
    # Given also a call last month that went past that month's limit on its own
    last_month = timezone.now() - timedelta(days=40)
    big = {"input_tokens": 10_000, "output_tokens": 500}
    assert report(api, "msg_old", usage=big, occurred_at=last_month.isoformat())["off_hold"] is True

    # When the budget's page is opened
    page = as_viewer.get(f"/t/acme/budgets/{overrun.pk.hex}/").content.decode()

    # Then its current window shows this month's one call and its cost, not last month's
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page))
    assert "past limit 1 call spent past the limit without a hold ($0.0105)" in text
    assert "off_hold=on&amp;feature=support-bot" in page


def test_a_budget_that_counts_no_such_call_says_nothing(as_viewer, tenant, overrun):
    other = BudgetFactory(tenant=tenant, scope="feature", feature=tenant.features.get(key="classifier"),
                          limit_nano=NANO)
    page = as_viewer.get(f"/t/acme/budgets/{other.pk.hex}/").content.decode()
    assert "without a hold" not in page
