"""The demo tenant on a fresh start: only open windows alert, and the forecast is not fooled.

Seeding takes a while, so one module-scoped demo serves every test here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import call_command

from budgets.alerting import budgets_evaluate, window_phrase
from budgets.models import Budget, BudgetWindow, Enforcement, Period, Scope
from budgets.periods import window_bounds
from budgets.projections import window_forecast
from budgets.selectors import budget_spend_since
from governance.management.commands import seed_demo
from governance.models import Feature, Tenant
from governance.notify.models import Alert
from usage.models import NANO, UsageEvent

# A Wednesday: the week, the month and the day are all under way, with 60 days behind them.
NOW = datetime(2026, 11, 25, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), time_machine.travel(NOW, tick=False):
        call_command("seed_demo", stdout=StringIO())
        tenant = Tenant.objects.get(slug="demo")
        features = {f.key: f for f in Feature.objects.filter(tenant=tenant)}
        # Budgets with sensible room over the demo's usual spend ($25 a week, $1 a night).
        extra = [
            Budget.objects.create(tenant=tenant, name="Code review roomy week", scope=Scope.FEATURE,
                                  feature=features["code-review"], period=Period.WEEK, limit_nano=30 * NANO,
                                  enforcement=Enforcement.ALERT, thresholds=[]),
            Budget.objects.create(tenant=tenant, name="Digest nightly", scope=Scope.FEATURE,
                                  feature=features["nightly-digest"], period=Period.DAY, limit_nano=NANO * 3 // 2,
                                  enforcement=Enforcement.ALERT, thresholds=[]),
        ]
    yield tenant, extra
    with django_db_blocker.unblock():
        UsageEvent.objects.filter(tenant=tenant).delete()  # the ledger protects its features
        tenant.delete()
        get_user_model().objects.filter(username__in=[seed_demo.OWNER, seed_demo.VIEWER]).delete()


@pytest.mark.django_db
@time_machine.travel(NOW, tick=False)
def test_a_fresh_demo_alerts_only_open_windows_each_naming_its_window(demo):
    # Given the demo as `make run` seeds it (its backfill commits 60 days of history)
    tenant, extra = demo

    # When the beat sweeps again
    budgets_evaluate()

    # Then every budget alert is about a window still under way, and says which
    alerts = list(Alert.objects.filter(tenant=tenant).select_related("window", "budget__tenant"))
    assert alerts
    # (the alerts of no budget are the demo's one drift, the Console's Sonnet two days ago, which
    # both reports name, each naming its day)
    day = (NOW.astimezone(tenant.tz).date() - timedelta(days=2)).isoformat()
    assert sorted(a.title for a in alerts if a.kind == "drift") == [
        f"Anthropic's cost report disagrees with the ledger on {day}", f"Unmetered Claude spend on {day}",
    ]
    alerts = [a for a in alerts if a.kind != "drift"]
    for alert in alerts:
        window = alert.window
        assert window is not None, alert.title
        assert window.start <= NOW and (window.end is None or window.end > NOW), alert.title
        window.budget = alert.budget
        assert window_phrase(window) in alert.title, alert.title
    # And budgets with room over the usual spend raise no forecast
    assert not [a.title for a in alerts if a.budget in extra]


@pytest.mark.django_db
def test_the_demo_weekly_and_nightly_patterns_raise_no_forecast_alarm_all_week(demo):
    # Given budgets with room over the demo's usual week of code review and night of digests
    tenant, extra = demo

    # When their forecast is read every two hours of the last seven days
    worst: dict[str, int] = {}
    for hours in range(0, 7 * 24, 2):
        now = NOW - timedelta(hours=hours)
        for budget in extra:
            start, end = window_bounds(budget.period, now, tenant.tz)
            spent = budget_spend_since(budget, unit="usd", since=start, now=now)
            window = BudgetWindow(budget=budget, start=start, end=end, spent_nano=spent)
            for outlook in window_forecast(window, now=now).outlooks:
                worst[budget.name] = max(worst.get(budget.name, 0), outlook.projected)
                # Then none of them ends over its limit
                assert not outlook.over, (budget.name, now, outlook)
    assert set(worst) == {b.name for b in extra}
