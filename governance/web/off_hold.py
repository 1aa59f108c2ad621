"""Reads of the spend no hold covered: calls flagged ``off_hold`` in the ledger.

A call is flagged when its spend, committed or reported without a live hold covering it,
took an enforcing (block or downgrade) budget past its limit: money the allowance never
got to refuse. Rollups do not split it out, so these reads go to the ledger, through the
partial index ``usage_event_off_hold``: such calls are rare, and a query touches only
them, however many calls the tenant makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from budgets.models import Budget, BudgetWindow, Scope
from budgets.selectors import budget_events
from governance.models import Feature, Tenant
from usage.models import UsageEvent

# The usage explorer's groups and sums (governance.web.reports), read from the ledger.
LEDGER_GROUPS = {"day": "local_day", "feature": "feature__key", "model": "model", "service_tier": "service_tier"}
LEDGER_SUMS = {
    "calls": Count("id"),
    "cost_nano": Sum("cost_nano"),
    "input_tokens": Sum("input_tokens"),
    "output_tokens": Sum("output_tokens"),
    "cache_write_5m_tokens": Sum("cache_write_5m_tokens"),
    "cache_write_1h_tokens": Sum("cache_write_1h_tokens"),
    "cache_read_tokens": Sum("cache_read_tokens"),
    "web_search_requests": Sum("web_search_requests"),
    "truncations": Count("id", filter=Q(stop_reason="max_tokens")),
}


@dataclass(frozen=True)
class OffHoldSpend:
    calls: int
    cost_nano: int


def off_hold_events(
    *, tenant: Tenant, start: date, end: date, feature: Feature | None = None, model: str = "",
    service_tier: str = "",
) -> QuerySet[UsageEvent]:
    """Return the tenant's off-hold calls on tenant-local days start..end inclusive, filtered like the explorer."""
    tz = tenant.tz
    events = UsageEvent.objects.filter(
        tenant=tenant, off_hold=True,
        occurred_at__gte=datetime.combine(start, time.min, tzinfo=tz),
        occurred_at__lt=datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz),
    )
    if feature is not None:
        events = events.filter(feature=feature)
    if model:
        events = events.filter(model=model)
    if service_tier:
        events = events.filter(service_tier=service_tier)
    return events


def off_hold_rows(
    *, tenant: Tenant, start: date, end: date, group_by: list[str], limit: int | None = None, **filters: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return the off-hold calls' sums grouped as the usage explorer groups rollups, and their totals."""
    events = off_hold_events(tenant=tenant, start=start, end=end, **filters).annotate(
        local_day=TruncDate("occurred_at", tzinfo=tenant.tz)
    ).order_by()
    totals = {name: value or 0 for name, value in events.aggregate(**LEDGER_SUMS).items()}
    if not group_by:
        return [], totals
    columns = [LEDGER_GROUPS[g] for g in group_by]
    ordering = [f"-{c}" if c == "local_day" else c for c in columns]
    grouped = events.values(*columns).annotate(**LEDGER_SUMS).order_by(*ordering)
    rows = [
        {**{g: row[LEDGER_GROUPS[g]] for g in group_by}, **{name: row[name] or 0 for name in LEDGER_SUMS}}
        for row in (grouped[:limit] if limit is not None else grouped)
    ]
    return rows, totals


def off_hold_marked(
    rows: list[dict[str, Any]], totals: dict[str, Any], *, tenant: Tenant, start: date, end: date,
    group_by: list[str], **filters: Any,
) -> None:
    """Set ``off_hold_calls`` and ``off_hold_cost_nano`` on each explorer row and on the totals."""
    off_rows, off_totals = off_hold_rows(tenant=tenant, start=start, end=end, group_by=group_by, **filters)
    by_group = {tuple(r[g] for g in group_by): r for r in off_rows}
    for row in rows:
        found = by_group.get(tuple(row[g] for g in group_by), {})
        row["off_hold_calls"] = found.get("calls", 0)
        row["off_hold_cost_nano"] = found.get("cost_nano", 0)
    totals["off_hold_calls"] = off_totals["calls"]
    totals["off_hold_cost_nano"] = off_totals["cost_nano"]


def window_off_hold(*, budget: Budget, window: BudgetWindow) -> OffHoldSpend:
    """Return the off-hold calls this budget counts in one of its windows, and what they cost.

    A call is flagged once, whichever enforcing budget it took past its limit, so a budget
    that counts it lists it: it is spend that budget's allowance never decided on.
    """
    events = budget_events(budget).filter(off_hold=True, occurred_at__gte=window.start)
    if window.end is not None:
        events = events.filter(occurred_at__lt=window.end)
    if budget.scope == Scope.RUN:
        events = events.filter(run_id=window.run_id)
    found = events.order_by().aggregate(calls=Count("id"), cost=Sum("cost_nano"))
    return OffHoldSpend(calls=found["calls"] or 0, cost_nano=found["cost"] or 0)
