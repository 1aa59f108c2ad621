"""Burn-rate forecasts: raised by the beat sweep when the window is on course to end over its limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from budgets.alerting import budgets_evaluate, window_projections
from budgets.models import BudgetWindow
from governance.audit import Actor
from governance.notify import services
from governance.notify.models import Alert
from tests.factories import BudgetFactory

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
NOV_11 = datetime(2026, 11, 11, tzinfo=UTC)  # a third of November gone
USD = 1_000_000_000


@pytest.fixture
def channel(tenant):
    return services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email", email_addresses=["fin@acme.test"]
    )


def month_window(tenant, *, spent_nano, limit_nano=100 * USD, **budget):
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=limit_nano, **budget)
    return BudgetWindow.objects.create(budget=budget, start=NOV_1, end=DEC_1, spent_nano=spent_nano)


def test_forecast_fires_when_the_burn_rate_projects_over_the_limit(
    tenant, channel, mailoutbox, django_capture_on_commit_callbacks
):
    # Given $40 of $100 spent in the first ten days of a 30-day month ($120 by month end)
    window = month_window(tenant, spent_nano=40 * USD, name="Monthly", thresholds=[])

    # When the beat task evaluates budgets
    with django_capture_on_commit_callbacks(execute=True):
        assert budgets_evaluate(now=NOV_11) == 1

    # Then one forecast alert says where the month ends and when the limit is reached
    alert = Alert.objects.get()
    assert alert.kind == "forecast"
    assert alert.window == window
    assert alert.title == "Monthly is on course to exceed its limit in November"
    assert alert.data["projected_nano"] == 120 * USD
    # $100 at $4/day is reached 25 days in: 26 November
    assert alert.data["reaches_limit_at"] == "2026-11-26T00:00:00+00:00"
    assert "ends at $120.00 against a limit of $100.00" in alert.body
    [email] = mailoutbox
    assert "Forecast at window end: $120.00 (over the limit)" in email.body
    assert "Limit reached: Thu 26 Nov 2026, 00:00 (UTC)" in email.body


def test_no_forecast_when_the_burn_rate_stays_under_the_limit(tenant, channel, mailoutbox):
    # $30 in ten days projects $90 of $100
    month_window(tenant, spent_nano=30 * USD, thresholds=[])
    assert budgets_evaluate(now=NOV_11) == 0
    assert not Alert.objects.exists()


def test_forecast_fires_once_per_window(tenant, channel, mailoutbox, django_capture_on_commit_callbacks):
    window = month_window(tenant, spent_nano=40 * USD, thresholds=[])
    with django_capture_on_commit_callbacks(execute=True):
        budgets_evaluate(now=NOV_11)
        BudgetWindow.objects.filter(pk=window.pk).update(spent_nano=60 * USD)
        budgets_evaluate(now=NOV_11 + timedelta(days=2))
    assert Alert.objects.filter(kind="forecast").count() == 1
    assert len(mailoutbox) == 1


def test_no_forecast_before_enough_of_the_window_has_passed(tenant, channel):
    # A few hours into a month the rate is noise: one call would "project" a fortune.
    month_window(tenant, spent_nano=5 * USD, thresholds=[])
    assert budgets_evaluate(now=NOV_1 + timedelta(hours=6)) == 0
    # A day in, the rate counts ($5/day projects $150)
    assert budgets_evaluate(now=NOV_1 + timedelta(days=1)) == 1


def test_no_forecast_for_windows_without_an_end(tenant, channel):
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="total", limit_nano=100 * USD, thresholds=[])
    window = BudgetWindow.objects.create(budget=budget, start=datetime(2000, 1, 1, tzinfo=UTC), spent_nano=99 * USD)
    assert window_projections(window, now=NOV_11) == []
    assert budgets_evaluate(now=NOV_11) == 0


def test_no_forecast_when_the_budget_opted_out(tenant, channel):
    month_window(tenant, spent_nano=40 * USD, thresholds=[], forecast_alert=False)
    assert budgets_evaluate(now=NOV_11) == 0


def test_no_forecast_once_the_limit_is_already_spent(tenant, channel):
    # The 100 % threshold has said it; "will exceed" would be stale news.
    month_window(tenant, spent_nano=100 * USD, thresholds=[])
    assert budgets_evaluate(now=NOV_11) == 0


def test_token_forecasts(tenant, channel):
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=None, limit_tokens=3_000_000, thresholds=[])
    BudgetWindow.objects.create(budget=budget, start=NOV_1, end=DEC_1, spent_tokens=1_500_000)
    assert budgets_evaluate(now=NOV_11) == 1
    alert = Alert.objects.get()
    assert alert.data["projected_tokens"] == 4_500_000
    assert "ends at 4,500,000 tokens against a limit of 3,000,000 tokens" in alert.body


def test_the_sweep_catches_thresholds_a_lost_task_missed(tenant, channel, mailoutbox, django_capture_on_commit_callbacks):
    # Given spend past 80 % that no commit-time evaluation announced
    month_window(tenant, spent_nano=85 * USD, name="Missed", forecast_alert=False)

    # When the beat task runs, twice
    with django_capture_on_commit_callbacks(execute=True):
        assert budgets_evaluate(now=NOV_11) == 1
        assert budgets_evaluate(now=NOV_11) == 0

    # Then the 80 % alert went out once
    assert Alert.objects.get().threshold == 80
    assert len(mailoutbox) == 1


def test_the_sweep_ignores_windows_long_over(tenant, channel):
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=100 * USD)
    BudgetWindow.objects.create(budget=budget, start=datetime(2026, 10, 1, tzinfo=UTC), end=NOV_1, spent_nano=90 * USD)
    assert budgets_evaluate(now=NOV_11) == 0
