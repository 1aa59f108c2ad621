"""Bench: the tenant dashboard's server time with 1,000,000 usage events in the ledger.

The bench writes a real ledger: 1,000,000 ``UsageEvent`` rows over 90 days (4 features,
4 models, 2 tiers, a weekly rhythm), the ``UsageRollup`` rows those events add up to,
and budgets whose current windows carry the matching spend. It then renders
``/t/<slug>/`` through Django's test client (middleware, session, view, selectors,
template) as a signed-in viewer, which is the server's time without the network, and
checks that no query reads the ledger table.

Run by hand (not in CI); the first run builds the data (SQLite ~2 min, PostgreSQL more):

    .venv/bin/python -m bench.dashboard [--runs 30] [--fresh]         # SQLite: var/bench-dashboard.sqlite3
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_dashboard \\
        .venv/bin/python -m bench.dashboard

The target is under 300 ms per request.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

EVENTS = 1_000_000
DAYS = 90
TENANT_SLUG = "bench-dashboard"
FEATURES = ["support-chat", "classifier", "code-review", "nightly-digest"]
MODELS = ["claude-opus-4-5-20251101", "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001", "claude-sonnet-4-6"]
TIERS = ["standard", "batch"]
TARGET_MS = 300
CHUNK = 20_000


def setup_django() -> None:
    # Test settings: throwaway secrets, DEBUG off (no query log kept), as in production.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    if "DATABASE_URL" not in os.environ:
        path = Path(__file__).resolve().parent.parent / "var" / "bench-dashboard.sqlite3"
        path.parent.mkdir(exist_ok=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    import django

    django.setup()


def build(tenant, *, seed: int = 11) -> None:
    """Write EVENTS ledger rows, their rollups, and budgets with the matching window spend."""
    from budgets.models import Budget, BudgetWindow, Period, Scope
    from budgets.periods import window_bounds
    from tests.factories import FeatureFactory
    from usage.models import NANO, UsageEvent, UsageRollup
    from usage.pricing import TokenUsage, model_family, price_for, to_nano, usage_cost

    rng = random.Random(seed)
    features = [FeatureFactory(tenant=tenant, key=key) for key in FEATURES]
    now = datetime.now(UTC)
    first = (now - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    # Weekdays carry three times a weekend day's traffic.
    weights = [3 if (first + timedelta(days=d)).weekday() < 5 else 1 for d in range(DAYS)]
    per_weight = EVENTS / sum(weights)
    counts = [round(w * per_weight) for w in weights]
    counts[-1] += EVENTS - sum(counts)
    prices = {(m, t): price_for(m, service_tier=t) for m in MODELS for t in TIERS}
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * 7)
    batch: list = []
    written = 0
    started = time.perf_counter()
    for d, count in enumerate(counts):
        day_start = first + timedelta(days=d)
        span = max(min((now - day_start).total_seconds(), 86400), 1)
        for _ in range(count):
            feature = rng.choice(features)
            model, tier = rng.choice(MODELS), rng.choice(TIERS)
            usage = TokenUsage(input_tokens=rng.randint(100, 4000), output_tokens=rng.randint(20, 900),
                               cache_read_tokens=rng.choice((0, 0, 2048)))
            cost = to_nano(usage_cost(prices[(model, tier)], usage, service_tier=tier))
            at = day_start + timedelta(seconds=rng.uniform(0, span))
            batch.append(UsageEvent(
                id=uuid.UUID(int=rng.getrandbits(128)), tenant=tenant, feature=feature, model=model,
                family=model_family(model), service_tier=tier, input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens, cost_nano=cost,
                max_tokens=1024, stop_reason="end_turn", latency_ms=rng.randint(300, 9000), occurred_at=at,
                source="report", request_id=f"bench-{written + len(batch)}",
            ))
            s = sums[(feature.pk, model, tier, at.date())]
            s[0] += 1
            s[1] += usage.input_tokens
            s[2] += usage.output_tokens
            s[3] += usage.cache_read_tokens
            s[4] += cost
            s[5] += 1024
            s[6] += usage.output_tokens
            if len(batch) >= CHUNK:
                UsageEvent.objects.bulk_create(batch, batch_size=2000)
                written += len(batch)
                batch = []
                print(f"\r  ledger: {written:,} events ({time.perf_counter() - started:.0f} s)", end="", flush=True)
    UsageEvent.objects.bulk_create(batch, batch_size=2000)
    written += len(batch)
    print(f"\r  ledger: {written:,} events ({time.perf_counter() - started:.0f} s)")
    by_pk = {f.pk: f for f in features}
    UsageRollup.objects.bulk_create(
        [
            UsageRollup(
                tenant=tenant, feature=by_pk[fid], model=model, family=model_family(model), service_tier=tier,
                day=day, calls=s[0], input_tokens=s[1], output_tokens=s[2], cache_read_tokens=s[3],
                cost_nano=s[4], max_tokens_sum=s[5], max_tokens_calls=s[0], output_tokens_capped=s[6],
            )
            for (fid, model, tier, day), s in sums.items()
        ],
        batch_size=2000,
    )
    print(f"  rollups: {len(sums):,} rows")

    # Budgets at several scopes and periods; their current windows get the ledger's spend.
    budgets = [
        Budget.objects.create(tenant=tenant, name="Tenant monthly", scope=Scope.TENANT, period=Period.MONTH,
                              limit_nano=60_000 * NANO),
        Budget.objects.create(tenant=tenant, name="Opus monthly", scope=Scope.TENANT, period=Period.MONTH,
                              model_families=["opus"], limit_nano=25_000 * NANO),
        Budget.objects.create(tenant=tenant, name="Classifier daily", scope=Scope.FEATURE, feature=features[1],
                              period=Period.DAY, limit_tokens=400_000_000),
    ]
    budgets += [
        Budget.objects.create(tenant=tenant, name=f"{f.key} weekly", scope=Scope.FEATURE, feature=f,
                              period=Period.WEEK, limit_nano=8_000 * NANO)
        for f in features
    ]
    for budget in budgets:
        start, end = window_bounds(budget.period, now, tenant.tz)
        spent = tokens = 0
        for (fid, model, _tier, day), s in sums.items():
            in_window = start.date() <= day < (end.date() if end else now.date() + timedelta(days=1))
            if not in_window or (budget.feature_id and budget.feature_id != fid):
                continue
            if budget.model_families and model_family(model) not in budget.model_families:
                continue
            spent += s[4]
            tokens += s[1] + s[2] + s[3]
        BudgetWindow.objects.create(budget=budget, start=start, end=end, spent_nano=spent, spent_tokens=tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--fresh", action="store_true", help="rebuild the bench tenant")
    args = parser.parse_args(argv)

    setup_django()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from governance.models import Membership, Role, Tenant
    from usage.models import UsageEvent, UsageRollup

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    call_command("migrate", verbosity=0)
    tenant = Tenant.objects.filter(slug=TENANT_SLUG).first()
    if tenant is not None and (args.fresh or UsageEvent.objects.filter(tenant=tenant).count() != EVENTS):
        print("removing the old bench tenant …")
        UsageEvent.objects.filter(tenant=tenant).delete()
        tenant.delete()
        tenant = None
    if tenant is None:
        tenant = Tenant.objects.create(slug=TENANT_SLUG, name="Bench dashboard", timezone="UTC")
        started = time.perf_counter()
        build(tenant)
        print(f"built in {time.perf_counter() - started:.0f} s")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    user, _ = get_user_model().objects.get_or_create(username="bench-viewer@dashboard.test")
    Membership.objects.get_or_create(user=user, tenant=tenant, defaults={"role": Role.VIEWER})
    client = Client()
    client.force_login(user)
    url = f"/t/{TENANT_SLUG}/"

    def render():
        response = client.get(url)
        assert response.status_code == 200, response.status_code
        return response

    with CaptureQueriesContext(connection) as queries:
        html = render().content.decode()
    ledger_queries = [q["sql"] for q in queries if "usage_usageevent" in q["sql"]]
    events = UsageEvent.objects.filter(tenant=tenant).count()
    rollups = UsageRollup.objects.filter(tenant=tenant).count()
    print(f"database: {engine}; tenant {TENANT_SLUG}: {events:,} ledger events, {rollups:,} rollup rows; "
          f"{len(queries)} queries per page, {len(ledger_queries)} touching the ledger; "
          f"{html.count('<svg')} SVG charts, {html.count('budget-bar')} budget bars, {len(html):,} bytes")
    for _ in range(3):
        render()
    samples = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        render()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p50 = statistics.median(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    print(f"GET {url} ({args.runs} runs)  min {samples[0]:.1f} ms  p50 {p50:.1f} ms  p95 {p95:.1f} ms  "
          f"max {samples[-1]:.1f} ms")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    met = p95 < TARGET_MS and not ledger_queries
    print(f"target: under {TARGET_MS} ms with no ledger scan: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
