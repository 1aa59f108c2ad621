"""Bench: the cost alerting adds to each commit, and the beat sweep over many live windows.

1. The after-commit check (``budgets.alerting._evaluate_if_crossed``) that every
   commit and usage report runs once its transaction has committed, for a call touching
   two windows with nothing to announce (the common case).
2. ``budgets_evaluate`` (the every-minute beat task) over WINDOWS live monthly windows,
   first when every due alert already exists (steady state), then when a tenth are
   newly past a threshold (alerts recorded, no channels so nothing is sent).
3. The same sweep with forecasts on, over four weeks of hourly history: the first sweep of
   the day reads each budget's profile from the ledger (one query per set of budgets
   counting the same calls), later ones find it cached.

Run by hand (not in CI), on PostgreSQL:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_alerts_bench \\
        .venv/bin/python -m bench.alerting [--windows 10000]

Targets: the check well under a millisecond; the sweep of 10,000 windows under 10 s
(it runs once a minute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NOW = datetime(2026, 11, 11, tzinfo=UTC)


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=2_000)
    args = parser.parse_args()
    setup_django()

    from budgets.alerting import _evaluate_if_crossed, budgets_evaluate
    from budgets.models import Budget, BudgetWindow
    from governance.models import Tenant
    from governance.notify.models import Alert

    Tenant.objects.filter(slug="bench-alerts").delete()
    tenant = Tenant.objects.create(slug="bench-alerts", name="Bench alerts")
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    limit = 100 * 10**9
    budgets = Budget.objects.bulk_create(
        [
            Budget(tenant=tenant, name=f"B{i}", scope="tenant", period="month", limit_nano=limit,
                   enforcement="alert", forecast_alert=False)
            for i in range(args.windows)
        ]
    )
    # 60 % spent: the 50 % alert is due everywhere.
    windows = BudgetWindow.objects.bulk_create(
        [BudgetWindow(budget=b, start=start, end=end, spent_nano=60 * 10**9) for b in budgets]
    )
    print(f"{len(windows)} live windows")

    t = time.perf_counter()
    raised = budgets_evaluate(now=NOW)
    print(f"sweep, every window newly past 50 %: {raised} alerts in {time.perf_counter() - t:.2f} s")

    t = time.perf_counter()
    raised = budgets_evaluate(now=NOW)
    print(f"sweep, steady state (all alerted):   {raised} alerts in {time.perf_counter() - t:.2f} s")

    tenth = [w.pk for w in windows[: len(windows) // 10]]
    BudgetWindow.objects.filter(pk__in=tenth).update(spent_nano=85 * 10**9)
    t = time.perf_counter()
    raised = budgets_evaluate(now=NOW)
    print(f"sweep, a tenth newly past 80 %:      {raised} alerts in {time.perf_counter() - t:.2f} s")

    # Forecasts: four weeks of history, one call an hour, then every budget forecasting.
    from django.core.cache import cache

    from governance.models import Feature
    from usage.models import UsageEvent

    feature = Feature.objects.create(tenant=tenant, key="bench", name="Bench")
    UsageEvent.objects.bulk_create(
        UsageEvent(tenant=tenant, feature=feature, model="claude-sonnet-4-5-20250929", family="sonnet",
                   input_tokens=1000, output_tokens=100, cost_nano=10**8, source="report",
                   occurred_at=datetime(2026, 10, 12, tzinfo=UTC) + timedelta(hours=h))
        for h in range(24 * 30)
    )
    Budget.objects.filter(tenant=tenant).update(forecast_alert=True)
    # The threshold alerts above read the (then empty) profile; a new day reads it again.
    from budgets.selectors import forget_profiles

    cache.clear()
    forget_profiles()
    t = time.perf_counter()
    raised = budgets_evaluate(now=NOW)
    print(f"sweep with forecasts, profile read:  {raised} alerts in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    raised = budgets_evaluate(now=NOW)
    print(f"sweep with forecasts, steady state:  {raised} alerts in {time.perf_counter() - t:.2f} s")
    UsageEvent.objects.filter(tenant=tenant).delete()

    pair = [windows[-1].pk, windows[-2].pk]
    samples = []
    for _ in range(args.checks):
        t = time.perf_counter()
        _evaluate_if_crossed(pair)
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    print(
        f"after-commit check, 2 windows, nothing new: median {statistics.median(samples):.3f} ms, "
        f"p99 {samples[int(len(samples) * 0.99)]:.3f} ms"
    )
    Alert.objects.filter(tenant=tenant).delete()
    tenant.delete()


if __name__ == "__main__":
    main()
