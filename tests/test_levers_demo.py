"""The demo tenant's lever board: each feature gets its own top recommendation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from governance.models import Tenant
from usage.levers import lever_board

# The web page's default range (governance.web.views.levers).
DEFAULT_DAYS = 30


@pytest.mark.django_db
# The demo's usage is drawn from a generator seeded per calendar day: a fixed "today" keeps
# the figures, and so this test, the same on every run.
@time_machine.travel(datetime(2026, 11, 24, 12, tzinfo=UTC), tick=False)
def test_each_demo_feature_has_a_different_top_recommendation():
    # Given the demo tenant with a month of usage
    call_command("seed_demo", "--days", str(DEFAULT_DAYS), stdout=StringIO())
    tenant = Tenant.objects.get(slug="demo")
    today = timezone.now().astimezone(tenant.tz).date()

    # When its lever board is read over the page's default range
    board = lever_board(tenant=tenant, start=today - timedelta(days=DEFAULT_DAYS - 1), end=today)

    # Then every feature has a recommendation, and no two features share their top lever
    tops = {f["key"]: f["recommendation"]["lever"] for f in board["features"] if f["recommendation"]}
    assert len(tops) == len(board["features"]) == 4, tops
    assert len(set(tops.values())) == len(tops), tops
