"""Bench: GET /api/v1/levers for a tenant with 1,000,000 usage events, on PostgreSQL.

A tenant's rollups are what the board reads, so the bench writes the rollups of a
million events directly: 4 features × 6 models × 3 tiers × 90 days = 6,480 rows whose
``calls`` add up to 1,000,000, with full latency and ttft histograms. It then times the
endpoint through Django's test client (the whole request: auth, throttle, view,
serializer, JSON), which is the server's time without the network.

Run by hand (not in CI):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_levers \\
        .venv/bin/python -m bench.levers [--runs 30] [--fresh]

The target is under 200 ms per request.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import date, timedelta

EVENTS = 1_000_000
DAYS = 90
TENANT_SLUG = "bench-levers"
FEATURES = [
    # key, interactive, max_tokens_cap
    ("support-chat", True, 1024),
    ("doc-search", True, None),
    ("nightly-digest", False, 4096),
    ("classifier", False, 256),
]
MODELS = [
    "claude-opus-4-1-20250805",
    "claude-opus-4-6",
    "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-6",
    "claude-sonnet-5",
    "claude-haiku-4-5-20251001",
]
TIERS = ["standard", "batch", "priority"]
TARGET_MS = 200


def setup_django() -> None:
    # The test settings give the secrets a throwaway default and lift the API rate limit,
    # which a bench firing requests back to back would otherwise hit.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()


def build(tenant, *, seed: int = 7) -> int:
    """Write the rollups of ``EVENTS`` usage events for ``tenant``; return the rows written."""
    from tests.factories import FeatureFactory
    from usage.models import HISTOGRAM_SIZE, UsageRollup, histogram_bucket
    from usage.pricing import TokenUsage, model_family, price_for, to_nano, usage_cost

    rng = random.Random(seed)
    features = [
        FeatureFactory(tenant=tenant, key=key, interactive=interactive, max_tokens_cap=cap)
        for key, interactive, cap in FEATURES
    ]
    first_day = date.today() - timedelta(days=DAYS - 1)
    groups = [(f, m, t) for f in features for m in MODELS for t in TIERS]
    rows_total = len(groups) * DAYS
    per_row, extra = divmod(EVENTS, rows_total)
    rows = []
    for n, (feature, model, tier) in enumerate(g for g in groups for _ in range(DAYS)):
        day = first_day + timedelta(days=n % DAYS)
        calls = per_row + (1 if n < extra else 0)
        usage = TokenUsage(
            input_tokens=calls * rng.randint(200, 6000),
            output_tokens=calls * rng.randint(50, 800),
            cache_write_5m_tokens=calls * rng.randint(0, 1500),
            cache_write_1h_tokens=calls * rng.randint(0, 300),
            cache_read_tokens=calls * rng.randint(0, 8000),
            web_search_requests=rng.randint(0, calls // 10),
        )
        price = price_for(model, service_tier=tier)
        with_cap = calls - rng.randint(0, calls // 5)
        latency = [0] * HISTOGRAM_SIZE
        ttft = [0] * HISTOGRAM_SIZE
        for _ in range(calls):
            latency[histogram_bucket(int(rng.lognormvariate(7.3, 0.7)))] += 1
        streamed = rng.randint(0, calls)
        for _ in range(streamed):
            ttft[histogram_bucket(int(rng.lognormvariate(6.0, 0.5)))] += 1
        rows.append(
            UsageRollup(
                tenant=tenant,
                feature=feature,
                model=model,
                family=model_family(model),
                service_tier=tier,
                day=day,
                calls=calls,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_write_5m_tokens=usage.cache_write_5m_tokens,
                cache_write_1h_tokens=usage.cache_write_1h_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                web_search_requests=usage.web_search_requests,
                cost_nano=to_nano(usage_cost(price, usage, service_tier=tier)),
                truncations=rng.randint(0, calls // 20),
                max_tokens_sum=with_cap * rng.choice([256, 1024, 4096]),
                max_tokens_calls=with_cap,
                output_tokens_capped=usage.output_tokens * with_cap // max(calls, 1),
                latency_sum_ms=calls * rng.randint(400, 6000),
                latency_count=calls,
                ttft_sum_ms=streamed * rng.randint(150, 900),
                ttft_count=streamed,
                streamed_calls=streamed,
                latency_histogram=latency,
                ttft_histogram=ttft,
            )
        )
    UsageRollup.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def budgets_for(tenant) -> None:
    from budgets.models import Budget, Period, Scope
    from usage.models import NANO

    Budget.objects.create(tenant=tenant, name="Tenant monthly", scope=Scope.TENANT, period=Period.MONTH,
                          limit_nano=50_000 * NANO)
    for feature in tenant.features.all()[:2]:
        Budget.objects.create(tenant=tenant, name=f"{feature.key} weekly", scope=Scope.FEATURE,
                              feature=feature, period=Period.WEEK, limit_nano=5_000 * NANO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--fresh", action="store_true", help="rebuild the bench tenant's rollups")
    args = parser.parse_args(argv)

    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Sum
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from budgets.levers import lever_board
    from governance.audit import Actor
    from governance.models import KeyRole, Tenant
    from governance.services import api_key_create
    from usage.models import UsageRollup

    engine = settings.DATABASES["default"]["ENGINE"]
    if not engine.endswith("postgresql"):
        print("warning: not PostgreSQL; set DATABASE_URL=postgres://...", file=sys.stderr)
    call_command("migrate", verbosity=0)

    tenant = Tenant.objects.filter(slug=TENANT_SLUG).first()
    if tenant is not None and (args.fresh or UsageRollup.objects.filter(tenant=tenant).aggregate(n=Sum("calls"))["n"] != EVENTS):
        tenant.delete()
        tenant = None
    if tenant is None:
        tenant = Tenant.objects.create(slug=TENANT_SLUG, name="Bench levers", timezone="UTC")
        started = time.perf_counter()
        written = build(tenant)
        budgets_for(tenant)
        print(f"wrote {written:,} rollup rows for {EVENTS:,} events in {time.perf_counter() - started:.1f} s")
        if engine.endswith("postgresql"):
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE usage_usagerollup")

    rows = UsageRollup.objects.filter(tenant=tenant).count()
    events = UsageRollup.objects.filter(tenant=tenant).aggregate(n=Sum("calls"))["n"]
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="bench", role=KeyRole.SERVICE)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    end = date.today()
    start = end - timedelta(days=DAYS - 1)
    params = {"start": start.isoformat(), "end": end.isoformat()}

    def timed(fn) -> list[float]:
        for _ in range(3):
            fn()
        samples = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
        return samples

    def request(extra=None):
        response = client.get("/api/v1/levers", {**params, **(extra or {})})
        assert response.status_code == 200, response.content[:500]
        return response

    with CaptureQueriesContext(connection) as queries:
        body = request().json()
    print(f"database: {engine.rsplit('.', 1)[-1]}; tenant {TENANT_SLUG}: {events:,} events in {rows:,} rollup rows; "
          f"{len(body['features'])} features; {len(queries)} queries per request")
    for feature in body["features"]:
        top = feature["recommendation"]
        print(f"  {feature['key']:15} spend ${feature['spend_usd']:>14}  top: {top['lever'] if top else '-'}"
              f" (saves ${feature['potential_saving_usd']})")

    results = {
        "GET /api/v1/levers (90 days, all features)": timed(request),
        "GET /api/v1/levers?feature=support-chat": timed(lambda: request({"feature": "support-chat"})),
        "lever_board() selector alone": timed(lambda: lever_board(tenant=tenant, start=start, end=end)),
    }
    failed = False
    for name, samples in results.items():
        samples.sort()
        p50 = statistics.median(samples)
        p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
        print(f"{name:48} min {samples[0]:6.1f} ms  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {samples[-1]:6.1f} ms")
        failed |= name.startswith("GET") and p95 >= TARGET_MS
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"target: under {TARGET_MS} ms: {'MISSED' if failed else 'met'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
