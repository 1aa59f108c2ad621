"""Bench: sync 30 days × 24 hourly buckets × 20 result rows of usage from a local stub.

The real sync code (httpx client, pagination, parsing, pricing by our table, upsert
by natural key) reads the documented shapes from ``usage.provider.stub`` served on a
local pytest-httpserver. It times a first sync of the 30 days (14,400 rows), a re-run
over the same window (nothing changed, so nothing is written), and the first sync again with
24 buckets a page (the API's default page size: 30 pages instead of 5).

Run by hand (not in CI):

    .venv/bin/python -m bench.provider_sync                       # SQLite in /tmp
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_sync .venv/bin/python -m bench.provider_sync

The target is under 30 s for the 30-day sync.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta

DAYS = 30
ROWS_PER_BUCKET = 20
TARGET_S = 30.0
TENANT_SLUG = "bench-provider"
MODELS = [
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-1-20250805",
    "claude-sonnet-4-6",
]
API_KEYS = [f"apikey_bench{n:02d}" for n in range(ROWS_PER_BUCKET // len(MODELS))]


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ.setdefault("DATABASE_URL", "sqlite:////tmp/comptroller_bench_provider.sqlite3")
    import django

    django.setup()


def fill(stub, start: datetime) -> None:
    from usage.provider.stub import usage_row

    for h in range(DAYS * 24):
        at = start + timedelta(hours=h)
        stub.usage[at] = [
            usage_row(
                model=model,
                api_key_id=key,
                workspace_id="wrkspc_bench" if n % 2 else None,
                uncached_input_tokens=1000 + h + n,
                output_tokens=200 + n,
                cache_write_5m=50 * n,
                cache_read=400 + h,
                context_window="200k-1M" if model.startswith("claude-sonnet-4-5") and n % 5 == 0 else "0-200k",
            )
            for n, (model, key) in enumerate((m, k) for m in MODELS for k in API_KEYS)
        ]


def main() -> int:
    setup_django()
    import logging

    from django.conf import settings
    from django.core.management import call_command
    from pytest_httpserver import HTTPServer

    from governance.audit import Actor
    from governance.models import Tenant
    from usage.provider import services
    from usage.provider.models import ProviderUsageBucket
    from usage.provider.stub import StubReports

    for name in ("httpx", "werkzeug", "usage.provider"):
        logging.getLogger(name).setLevel(logging.WARNING)
    call_command("migrate", verbosity=0)
    Tenant.objects.filter(slug=TENANT_SLUG).delete()
    tenant = Tenant.objects.create(slug=TENANT_SLUG, name="Bench provider", timezone="UTC")

    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        stub = StubReports()
        settings.ANTHROPIC_API_BASE_URL = stub.serve(server)
        start = datetime(2026, 10, 1, tzinfo=UTC)
        end = start + timedelta(days=DAYS)
        fill(stub, start)
        connection = services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=stub.api_key)
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        print(f"database: {engine}; {DAYS} days × 24 buckets × {ROWS_PER_BUCKET} rows")

        def run(label: str) -> float:
            stub.requests.clear()
            t0 = time.perf_counter()
            result = services.provider_usage_sync(connection=connection, start=start, end=end)
            elapsed = time.perf_counter() - t0
            assert result.ok, result.error
            stored = ProviderUsageBucket.objects.filter(tenant=tenant).count()
            print(f"{label:<34} {elapsed:6.2f} s  {result.rows:,} rows read, {result.written:,} written, "
                  f"{len(stub.requests)} pages, {stored:,} stored")
            return elapsed

        first = run("first sync (168 buckets a page)")
        run("re-run, same window")
        ProviderUsageBucket.objects.filter(tenant=tenant).delete()
        stub.page_size = 24
        run("first sync (24 buckets a page)")
        expected = DAYS * 24 * ROWS_PER_BUCKET
        assert ProviderUsageBucket.objects.filter(tenant=tenant).count() == expected
        verdict = "OK" if first < TARGET_S else "OVER TARGET"
        print(f"target < {TARGET_S:.0f} s for the first 30-day sync: {verdict}")
    finally:
        server.stop()
        Tenant.objects.filter(slug=TENANT_SLUG).delete()
    return 0 if first < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
