"""Reads of the ledger, always from the daily rollups (never a ledger scan)."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db.models import F, QuerySet, Sum

from governance.models import Feature, Tenant
from usage.models import UsageEvent, UsageRollup

GROUPS = {"feature": "feature__key", "model": "model", "day": "day", "service_tier": "service_tier", "family": "family"}
TOKEN_SUMS = (
    "input_tokens", "output_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens",
    "web_search_requests",
)


def rollups_in(*, tenant: Tenant, start: date, end: date, feature: Feature | None = None) -> QuerySet[UsageRollup]:
    """Return the tenant's rollups for tenant-local days start..end inclusive."""
    rollups = UsageRollup.objects.filter(tenant=tenant, day__gte=start, day__lte=end)
    if feature is not None:
        rollups = rollups.filter(feature=feature)
    return rollups


def usage_summary(
    *, tenant: Tenant, start: date, end: date, group_by: list[str], feature: Feature | None = None
) -> dict[str, Any]:
    """Return cost (``cost_nano``), calls and tokens by type over the range, grouped, plus the totals."""
    columns = [GROUPS[g] for g in group_by]
    sums = {name: Sum(name) for name in ("calls", "cost_nano", *TOKEN_SUMS)}
    rollups = rollups_in(tenant=tenant, start=start, end=end, feature=feature)
    rows = rollups.values(*columns).annotate(**sums).order_by(*columns) if columns else []
    totals = rollups.aggregate(**sums)

    def render(row: dict[str, Any], groups: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {g: row[GROUPS[g]] for g in groups}
        if "day" in out:
            out["day"] = out["day"].isoformat()
        out["cost_nano"] = row["cost_nano"] or 0
        out["calls"] = row["calls"] or 0
        out["tokens"] = {name: row[name] or 0 for name in TOKEN_SUMS}
        return out

    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
        "rows": [render(r, group_by) for r in rows],
        "total": render(totals, []),
    }


def _spend(rows: QuerySet) -> tuple[int, int]:
    tokens = (F("input_tokens") + F("output_tokens") + F("cache_write_5m_tokens") + F("cache_write_1h_tokens")
              + F("cache_read_tokens"))
    totals = rows.aggregate(cost=Sum("cost_nano"), tokens=Sum(tokens))
    return totals["cost"] or 0, totals["tokens"] or 0


def ledger_spend(
    *, tenant: Tenant, first_day: date | None, end_day: date | None, feature_id: Any = None,
    families: list[str] | None = None, run_id: str = "",
) -> tuple[int, int]:
    """Return the cost (nano-USD) and tokens the ledger holds for one budget scope and period.

    The period is the tenant-local days ``first_day`` up to, not including, ``end_day``
    (either open), read from the daily rollups; a run's spend (``run_id``) is read from the
    ledger itself, by its run index, as rollups do not keep runs.
    """
    if run_id:
        rows: QuerySet = UsageEvent.objects.filter(tenant=tenant, run_id=run_id)
    else:
        rows = UsageRollup.objects.filter(tenant=tenant)
        if first_day is not None:
            rows = rows.filter(day__gte=first_day)
        if end_day is not None:
            rows = rows.filter(day__lt=end_day)
    if feature_id is not None:
        rows = rows.filter(feature_id=feature_id)
    if families:
        rows = rows.filter(family__in=families)
    return _spend(rows)
