"""Forecasts: the trailing weeks' weekday and hour-of-day pattern, scaled to the window.

Raised by the beat sweep when the window is on course to end over its limit. The
expected figures are worked out by hand from the model in ``budgets.forecast``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db.models import Sum

from budgets.alerting import budgets_evaluate
from budgets.models import BudgetWindow
from budgets.projections import window_forecast, window_projections
from governance.audit import Actor
from governance.notify import services
from governance.notify.models import Alert
from tests.factories import BudgetFactory
from tests.factories import ledger_history as history
from usage.models import UsageEvent

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
NOV_11 = datetime(2026, 11, 11, tzinfo=UTC)  # a third of November gone
USD = 1_000_000_000
CENT = USD // 100


@pytest.fixture
def channel(tenant):
    return services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email", email_addresses=["fin@acme.test"]
    )


def ten_cents_an_hour(at: datetime) -> list[int]:
    return [10 * CENT]


def month_window(tenant, *, spent_nano, limit_nano=100 * USD, feature=None, **budget):
    budget = BudgetFactory(tenant=tenant, scope="feature" if feature else "tenant", feature=feature,
                           period="month", limit_nano=limit_nano, **budget)
    return BudgetWindow.objects.create(budget=budget, start=NOV_1, end=DEC_1, spent_nano=spent_nano)


@pytest.fixture
def steady(feature):
    """Six weeks of $0.10 an hour, every hour: $2.40 a day, $72 in a 30-day month."""
    history(feature, first=date(2026, 9, 30), last=date(2026, 11, 10), calls_in=ten_cents_an_hour)
    return feature


def test_forecast_fires_when_the_usual_pace_ends_over_the_limit(
    tenant, steady, channel, mailoutbox, django_capture_on_commit_callbacks
):
    # Given $40 of $100 spent in the first ten days of November, where $24 is usual
    window = month_window(tenant, spent_nano=40 * USD, name="Monthly", thresholds=[])

    # When the beat task evaluates budgets
    with django_capture_on_commit_callbacks(execute=True):
        assert budgets_evaluate(now=NOV_11) == 1

    # Then one forecast alert says where the month ends and when the limit is reached:
    # the prior is a fifth of the usual month ($14.40), so the month runs at
    # (40 + 14.40) / (24 + 14.40) of its usual pace, and the usual $48 still to come
    # becomes $68: $108 in all.
    alert = Alert.objects.get()
    assert alert.kind == "forecast"
    assert alert.window == window
    assert alert.title == "Monthly is on course to exceed its limit in November"
    assert alert.data["projected_nano"] == 108 * USD
    assert alert.data["basis"] == "trend"
    # $60 to go at $0.10 × 54.4 / 38.4 an hour: 423.53 hours after Nov 11, 00:00
    assert alert.data["reaches_limit_at"].startswith("2026-11-28T15:31")
    assert "ends at $108.00 against a limit of $100.00" in alert.body
    assert "pattern of the last 4 weeks" in alert.body
    [email] = mailoutbox
    assert "Forecast at window end: $108.00 (over the limit)" in email.body
    assert "Limit reached: Sat 28 Nov 2026, 15:31 (UTC)" in email.body


def test_no_forecast_when_the_window_runs_at_its_usual_pace(tenant, steady, channel):
    # $24 in ten days is the usual pace: the month ends near $72 of $100
    window = month_window(tenant, spent_nano=24 * USD, thresholds=[])
    assert [p.projected for p in window_projections(window, now=NOV_11)] == [72 * USD]
    assert budgets_evaluate(now=NOV_11) == 0
    assert not Alert.objects.exists()


def test_forecast_fires_once_per_window(tenant, steady, channel, mailoutbox, django_capture_on_commit_callbacks):
    window = month_window(tenant, spent_nano=40 * USD, thresholds=[])
    with django_capture_on_commit_callbacks(execute=True):
        budgets_evaluate(now=NOV_11)
        BudgetWindow.objects.filter(pk=window.pk).update(spent_nano=60 * USD)
        budgets_evaluate(now=NOV_11 + timedelta(days=2))
    assert Alert.objects.filter(kind="forecast").count() == 1
    assert len(mailoutbox) == 1


def test_no_forecast_alarm_before_a_tenth_of_the_usual_window_has_passed(tenant, steady, channel):
    # Two days in, a tenth of the usual month ($7.20) has not yet happened: the figure is
    # shown (mostly the usual pattern), but it raises nothing
    window = month_window(tenant, spent_nano=30 * USD, thresholds=[])
    forecast = window_forecast(window, now=NOV_1 + timedelta(days=2))
    [outlook] = forecast.outlooks
    assert not outlook.settled and outlook.over
    assert forecast.note.startswith("Early in the window")
    assert budgets_evaluate(now=NOV_1 + timedelta(days=2)) == 0
    # Three days in, it has ($7.20): the forecast speaks
    assert budgets_evaluate(now=NOV_1 + timedelta(days=3)) == 1


def test_no_forecast_with_less_than_a_week_of_history(tenant, feature, channel):
    history(feature, first=date(2026, 11, 5), last=date(2026, 11, 10), calls_in=ten_cents_an_hour)
    window = month_window(tenant, spent_nano=90 * USD, thresholds=[])
    assert window_projections(window, now=NOV_11) == []
    assert window_forecast(window, now=NOV_11).note == "No forecast yet: it needs a week of this budget's history."
    assert budgets_evaluate(now=NOV_11) == 0


def test_no_forecast_for_windows_without_an_end(tenant, steady, channel):
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="total", limit_nano=100 * USD, thresholds=[])
    window = BudgetWindow.objects.create(budget=budget, start=datetime(2000, 1, 1, tzinfo=UTC), spent_nano=99 * USD)
    assert window_projections(window, now=NOV_11) == []
    assert budgets_evaluate(now=NOV_11) == 0


def test_no_forecast_when_the_budget_opted_out(tenant, steady, channel):
    month_window(tenant, spent_nano=40 * USD, thresholds=[], forecast_alert=False)
    assert budgets_evaluate(now=NOV_11) == 0


def test_no_forecast_once_the_limit_is_already_spent(tenant, steady, channel):
    # The 100 % threshold has said it; "will exceed" would be stale news.
    month_window(tenant, spent_nano=100 * USD, thresholds=[])
    assert budgets_evaluate(now=NOV_11) == 0


def test_token_forecasts(tenant, steady, channel):
    # Each call is 1,100 tokens an hour: 792,000 in a usual month, 264,000 in its first ten days.
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=None, limit_tokens=1_000_000,
                           thresholds=[])
    BudgetWindow.objects.create(budget=budget, start=NOV_1, end=DEC_1, spent_tokens=500_000)
    assert budgets_evaluate(now=NOV_11) == 1
    alert = Alert.objects.get()
    # prior 158,400: 500,000 + (658,400 / 422,400) × 528,000 = 1,323,000
    assert alert.data["projected_tokens"] == 1_323_000
    assert "ends at 1,323,000 tokens against a limit of 1,000,000 tokens" in alert.body


# --- the shapes the demo has: office hours through the week, one nightly job ---------------


def office_hours(at: datetime) -> list[int]:
    """Sixty calls of half a cent an hour, 09:00-17:00 on working days: $2.40 a day, $12 a week."""
    return [CENT // 2] * 60 if at.weekday() < 5 and 9 <= at.hour < 17 else []


def nightly(at: datetime) -> list[int]:
    """A job at 02:00 every night: sixty calls of 2 cents, $1.20 a day."""
    return [2 * CENT] * 60 if at.hour == 2 else []


def week_window(budget, start: datetime, spent: int) -> BudgetWindow:
    window, _ = BudgetWindow.objects.update_or_create(
        budget=budget, start=start, run_id="", defaults={"end": start + timedelta(days=7), "spent_nano": spent},
    )
    return window


def spend_between(feature, start: datetime, end: datetime) -> int:
    events = UsageEvent.objects.filter(feature=feature, occurred_at__gte=start, occurred_at__lt=end)
    return events.aggregate(total=Sum("cost_nano"))["total"] or 0


def test_a_working_week_raises_no_forecast_alarm_at_any_hour(tenant, feature, channel):
    # Given a week of office hours, and this week (from Monday Nov 23) going as usual
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    history(feature, first=date(2026, 11, 16), last=date(2026, 11, 29), calls_in=office_hours)
    budget = BudgetFactory(tenant=tenant, name="Weekly", scope="feature", feature=feature, period="week",
                           limit_nano=13 * USD, thresholds=[])

    # When the forecast is read every three hours of the week
    projected = {}
    for hours in range(1, 7 * 24, 3):
        now = monday + timedelta(hours=hours)
        window = week_window(budget, monday, spend_between(feature, monday, now))
        outlooks = window_projections(window, now=now)
        if outlooks:
            projected[hours] = outlooks[0].projected

    # Then it never says more than the usual $12 (a straight line said $25.85 on Monday at 13:00)
    assert projected and max(projected.values()) == 12 * USD
    assert 13 in projected  # Monday 13:00, with a tenth of the week's usual spend done
    now = monday + timedelta(hours=13)
    week_window(budget, monday, spend_between(feature, monday, now))
    assert budgets_evaluate(now=now) == 0


def test_a_nightly_job_raises_no_forecast_alarm(tenant, feature, channel):
    # Given a week of a nightly job, and tonight's run going as usual
    today = datetime(2026, 11, 25, tzinfo=UTC)
    history(feature, first=date(2026, 11, 18), last=date(2026, 11, 25), calls_in=nightly)
    budget = BudgetFactory(tenant=tenant, name="Daily", scope="feature", feature=feature, period="day",
                           limit_nano=150 * CENT, thresholds=[])

    # When the forecast is read every twenty minutes of the day
    for minutes in range(20, 24 * 60, 20):
        now = today + timedelta(minutes=minutes)
        window, _ = BudgetWindow.objects.update_or_create(
            budget=budget, start=today, run_id="",
            defaults={"end": today + timedelta(days=1), "spent_nano": spend_between(feature, today, now)},
        )
        # Then it says the usual $1.20 (a straight line said $4.80 at 02:24)
        assert all(p.projected == 120 * CENT for p in window_projections(window, now=now)), minutes
        if minutes == 2 * 60 + 20:
            assert budgets_evaluate(now=now) == 0


def test_a_spike_of_twice_the_usual_rate_for_two_hours_alarms(tenant, feature, channel, mailoutbox,
                                                            django_capture_on_commit_callbacks):
    # Given a week of office hours ($12 a week) and a $14 weekly budget
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    history(feature, first=date(2026, 11, 16), last=date(2026, 11, 23), calls_in=office_hours)
    tuesday_noon = monday + timedelta(days=1, hours=12)
    history(feature, first=date(2026, 11, 24), last=date(2026, 11, 24),
            calls_in=lambda at: office_hours(at) if at < tuesday_noon else [])
    budget = BudgetFactory(tenant=tenant, name="Weekly", scope="feature", feature=feature, period="week",
                           limit_nano=14 * USD, thresholds=[])

    # When Tuesday's 12:00-14:00 runs at twice the usual rate
    now = tuesday_noon + timedelta(hours=2)
    history(feature, first=date(2026, 11, 24), last=date(2026, 11, 24),
            calls_in=lambda at: office_hours(at) * 2 if tuesday_noon <= at < now else [])
    window = week_window(budget, monday, spend_between(feature, monday, now))
    assert window.spent_nano == 450 * CENT  # $2.40 on Monday, $0.90 until noon, then $1.20

    # Then the forecast assumes the spike goes on: $4.50 + 2 × the usual $8.10 still to come
    [outlook] = window_projections(window, now=now)
    assert (outlook.basis, outlook.projected) == ("spike", 2070 * CENT)
    with django_capture_on_commit_callbacks(execute=True):
        assert budgets_evaluate(now=now) == 1
    alert = Alert.objects.get()
    assert alert.title == "Weekly is on course to exceed its limit in the week of Nov 23"
    assert "The last two hours ran at 2.0× the usual rate" in alert.body
    assert len(mailoutbox) == 1


def test_the_same_afternoon_without_the_spike_stays_quiet(tenant, feature, channel):
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    now = monday + timedelta(days=1, hours=14)
    history(feature, first=date(2026, 11, 16), last=date(2026, 11, 24),
            calls_in=lambda at: office_hours(at) if at < now else [])
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, period="week", limit_nano=14 * USD,
                           thresholds=[])
    window = week_window(budget, monday, spend_between(feature, monday, now))
    [outlook] = window_projections(window, now=now)
    assert (outlook.basis, outlook.projected) == ("trend", 12 * USD)
    assert budgets_evaluate(now=now) == 0


# --- the sweep --------------------------------------------------------------------------------


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
