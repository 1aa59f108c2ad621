"""The demo tenant's lever board tells the truth about each feature's levers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from budgets.levers import lever_board
from governance.models import Tenant
from usage.models import UsageEvent

# The web page's default range (governance.web.views.levers).
DEFAULT_DAYS = 30


def board_feature(board, key):
    [row] = [f for f in board["features"] if f["key"] == key]
    return row


@pytest.mark.django_db
# The demo's usage is drawn from a generator seeded per calendar day: a fixed "today" keeps
# the figures, and so this test, the same on every run.
@time_machine.travel(datetime(2026, 11, 24, 12, tzinfo=UTC), tick=False)
def test_the_demo_board_advises_what_is_true():
    # Given the demo tenant with two months of usage
    call_command("seed_demo", stdout=StringIO())
    tenant = Tenant.objects.get(slug="demo")
    today = timezone.now().astimezone(tenant.tz).date()

    # When its lever board is read over the page's default range
    board = lever_board(tenant=tenant, start=today - timedelta(days=DEFAULT_DAYS - 1), end=today)

    # Then code review, whose 5-minute cache has expired by each next review, is told to
    # write for an hour instead, with a measured figure
    review = board_feature(board, "code-review")
    caching = review["levers"]["prompt_caching"]
    assert review["recommendation"]["lever"] == "prompt_caching"
    assert caching["recommended_ttl"] == "1h"
    assert caching["potential_saving_nano"] > 0
    # The nightly digest moved to batch three weeks ago: pulled, not advised
    digest = board_feature(board, "nightly-digest")["levers"]["batch"]
    assert digest["recommendation"] is None and digest["pulled"] is not None
    # The classifier, on the smallest model, is not told to try a smaller one
    classifier = board_feature(board, "ticket-classifier")["levers"]["model_selection"]
    assert classifier["recommendation"] is None
    # Cut-off support answers are a quality signal with no money on them
    support = board_feature(board, "support-assistant")["levers"]["max_tokens"]
    assert support["potential_saving_nano"] == 0
    # and the headline keeps measured savings apart from what-ifs
    totals = board["totals"]
    assert totals["firm_saving_nano"] >= caching["potential_saving_nano"]
    assert totals["what_if_saving_nano"] > 0

    # Over two months, the classifier's move to Haiku 35 days ago shows as pulled
    wide = lever_board(tenant=tenant, start=today - timedelta(days=59), end=today)
    moved = board_feature(wide, "ticket-classifier")["levers"]["model_selection"]["pulled"]
    assert moved is not None and moved["from_model"].startswith("claude-sonnet")

    # The hardest reviews went to the Fable of their day: 5.1 before Fable 5.2's launch (2026-11-09), 5.2 after
    fables = UsageEvent.objects.filter(tenant=tenant, feature__key="code-review", family="fable")
    before = fables.filter(occurred_at__lt=datetime(2026, 11, 8, tzinfo=UTC))
    after = fables.filter(occurred_at__gte=datetime(2026, 11, 10, tzinfo=UTC))
    assert set(before.values_list("model", flat=True)) == {"claude-fable-5-1"}
    assert set(after.values_list("model", flat=True)) == {"claude-fable-5-2"}
