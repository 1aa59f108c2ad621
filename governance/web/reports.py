"""Reads behind the dashboard and budget pages, from rollups and budget windows only.

Nothing here touches the usage ledger (UsageEvent): every figure is a sum over
UsageRollup rows (one per tenant × feature × model × tier × day) or a budget
window's counters, so pages stay fast however many calls a tenant makes. The one
exception is a single UTC day of mapped features' events for the provider page's
per-feature reconciliation, when the tenant's days are not UTC days.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import F, Sum
from django.utils import timezone

from budgets.models import Budget, BudgetWindow, Period, Scope
from budgets.projections import spend_outlook, window_forecast
from budgets.selectors import budget_list, current_window
from governance.models import Tenant
from governance.notify.models import Notification
from governance.notify.selectors import alert_list
from governance.web import charts
from usage.models import UsageRollup
from usage.provider.selectors import (
    USAGE_SETTLES_AFTER,
    connection_get,
    feature_reconciliation_compute,
    reconciliation_compute,
)

TOKEN_SUM = (
    F("input_tokens") + F("output_tokens") + F("cache_write_5m_tokens") + F("cache_write_1h_tokens")
    + F("cache_read_tokens")
)
MAX_SERIES = 6  # more colours than this are unreadable; the rest is "other"


def local_today(tenant: Tenant, now: datetime | None = None) -> date:
    return (now or timezone.now()).astimezone(tenant.tz).date()


def day_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def budget_rollups(budget: Budget):
    """Return the rollups a budget counts: its tenant, its feature, its model families."""
    rollups = UsageRollup.objects.filter(tenant_id=budget.tenant_id)
    if budget.feature_id is not None:
        rollups = rollups.filter(feature_id=budget.feature_id)
    if budget.model_families:
        rollups = rollups.filter(family__in=budget.model_families)
    return rollups


def _measure(budget: Budget) -> str:
    return "cost_nano" if budget.limit_nano is not None else "tokens"


def _daily(rollups, measure: str) -> dict[date, int]:
    expr = Sum("cost_nano") if measure == "cost_nano" else Sum(TOKEN_SUM)
    return {row["day"]: row["v"] or 0 for row in rollups.values("day").annotate(v=expr).order_by()}


# --- budget windows --------------------------------------------------------------------


@dataclass
class BudgetCard:
    budget: Budget
    window: BudgetWindow
    unit: str  # "usd" or "tokens"
    limit: int
    spent: int
    held: int
    forecast: int | None
    bar: Any
    runs_out_at: datetime | None = None
    forecast_note: str = ""
    forecast_alarming: bool = False

    @property
    def remaining(self) -> int:
        return self.limit - self.spent - self.held

    @property
    def used_pct(self) -> int:
        return round(100 * (self.spent + self.held) / self.limit) if self.limit else 0

    @property
    def state(self) -> str:
        """Return ok / warn / over, for the colour of the badge next to the bar."""
        if self.spent + self.held >= self.limit:
            return "over"
        crossed = [t for t in self.budget.thresholds if t < 100 and self.used_pct >= t]
        if crossed or self.forecast_alarming:
            return "warn"
        return "ok"

    @property
    def fmt(self):
        return charts.usd_short if self.unit == "usd" else charts.tokens_short


def budget_card(budget: Budget, *, now: datetime | None = None) -> BudgetCard:
    now = now or timezone.now()
    window = current_window(budget, at=now)
    if budget.limit_nano is not None:
        unit, limit, spent, held = "usd", budget.limit_nano, window.spent_nano, window.reserved_nano
    else:
        unit, limit, spent, held = "tokens", budget.limit_tokens or 0, window.spent_tokens, window.reserved_tokens
    # The forecast alerts' own, so page and alert agree by construction.
    forecast_of = window_forecast(window, now=now)
    projection = next((p for p in forecast_of.outlooks if p.unit == unit), None)
    forecast = projection.projected if projection else None
    fmt = charts.usd_short if unit == "usd" else charts.tokens_short
    bar = charts.budget_bar(
        spent=spent, held=held, limit=limit, thresholds=budget.thresholds, forecast=forecast, fmt=fmt,
    )
    card = BudgetCard(budget, window, unit, limit, spent, held, forecast, bar)
    card.runs_out_at = projection.reaches_limit_at if projection and projection.alarming else None
    card.forecast_note = forecast_of.note
    card.forecast_alarming = bool(projection and projection.alarming)
    return card


def budget_cards(*, tenant: Tenant, now: datetime | None = None) -> list[BudgetCard]:
    """Return every active non-run budget's current window, fullest first."""
    budgets = budget_list(tenant=tenant).filter(active=True).exclude(scope=Scope.RUN)
    cards = [budget_card(b, now=now) for b in budgets]
    return sorted(cards, key=lambda c: (-(c.spent + c.held) / max(c.limit, 1), c.budget.name))


def run_windows(*, budget: Budget, limit: int = 20) -> list[BudgetWindow]:
    """Return a run budget's most expensive recent runs."""
    return list(BudgetWindow.objects.filter(budget=budget).order_by("-start", "-spent_nano")[:limit])


# --- cumulative spend with forecast and limit -----------------------------------------------


def cumulative_chart_for(*, budget: Budget | None, tenant: Tenant, now: datetime | None = None):
    """Return the cumulative-spend chart over a budget's window (or the tenant's month), or None.

    Day windows are a single point, so a day budget is drawn over the current month
    with its daily limit instead (see ``daily_chart_for``).
    """
    now = now or timezone.now()
    today = local_today(tenant, now)
    fmt: Callable[[int], str]
    if budget is None or budget.period in (Period.DAY, Period.TOTAL) or budget.scope == Scope.RUN:
        if budget is not None:
            return None
        first, last = today.replace(day=1), (today.replace(day=1) + timedelta(days=32)).replace(day=1)
        rollups, measure, limit, fmt = UsageRollup.objects.filter(tenant=tenant), "cost_nano", None, charts.usd_short
        label = "Cumulative spend this month"
    else:
        window = current_window(budget, at=now)
        # Total budgets returned above; every other period's window has an end.
        assert window.end is not None
        first = window.start.astimezone(tenant.tz).date()
        last = window.end.astimezone(tenant.tz).date()
        rollups, measure = budget_rollups(budget), _measure(budget)
        limit = budget.limit_nano if measure == "cost_nano" else budget.limit_tokens
        fmt = charts.usd_short if measure == "cost_nano" else charts.tokens_short
        label = f"Cumulative spend of {budget.name} this {budget.period}"
    days = day_range(first, last - timedelta(days=1))
    # Early in a window there is little to draw: the previous window's line gives the scale.
    previous_days = day_range(_previous_start(first, budget), first - timedelta(days=1))
    daily = _daily(rollups.filter(day__gte=previous_days[0], day__lte=today), measure)
    cumulative: list[int | None] = []
    running = 0
    for day in days:
        if day > today:
            cumulative.append(None)
            continue
        running += daily.get(day, 0)
        cumulative.append(running)
    previous: list[int | None] | None = None
    if (today - first).days < EARLY_WINDOW_DAYS:
        total = 0
        previous = []
        for day in previous_days[: len(days)]:
            total += daily.get(day, 0)
            previous.append(total)
        previous = previous if total else None
    if budget is not None:
        card = budget_card(budget, now=now)
        forecast_end, note = card.forecast, card.forecast_note
    else:
        start_at = datetime.combine(first, time(0), tzinfo=tenant.tz)
        end_at = datetime.combine(last, time(0), tzinfo=tenant.tz)
        month = Budget(tenant=tenant, scope=Scope.TENANT, period=Period.MONTH)
        outlook = spend_outlook(month, start=start_at, end=end_at, spent=running, limit=0, unit="usd", now=now)
        forecast_end = outlook.projected if outlook else None
        note = "Based on the weekday and hour-of-day pattern of the last " + (
            f"{outlook.weeks} week{'s' if outlook.weeks > 1 else ''}." if outlook else "weeks (needs one)."
        )
    return {
        "svg": charts.responsive(charts.cumulative_chart, days=days, cumulative=cumulative,
                                 forecast_end=forecast_end, limit=limit, fmt=fmt, label=label,
                                 previous=previous),
        "spent": running,
        "forecast": forecast_end,
        "forecast_note": note,
        "previous": previous is not None,
        "limit": limit,
        "fmt": fmt,
        "label": label,
    }


# Until this many days of a window have passed, its chart also draws the previous window.
EARLY_WINDOW_DAYS = 7


def _previous_start(first: date, budget: Budget | None) -> date:
    """Return the first day of the window before the one starting on ``first``."""
    if budget is not None and budget.period == Period.WEEK:
        return first - timedelta(days=7)
    return (first - timedelta(days=1)).replace(day=1)


def daily_chart_for(*, budget: Budget, tenant: Tenant, now: datetime | None = None, days: int = 30):
    """Return a day budget's last ``days`` days of spend against its daily limit."""
    today = local_today(tenant, now)
    measure = _measure(budget)
    day_list = day_range(today - timedelta(days=days - 1), today)
    daily = _daily(budget_rollups(budget).filter(day__gte=day_list[0], day__lte=today), measure)
    fmt = charts.usd_short if measure == "cost_nano" else charts.tokens_short
    limit = budget.limit_nano if measure == "cost_nano" else budget.limit_tokens
    series = [charts.Series(budget.name, charts.SPENT, [daily.get(d, 0) for d in day_list])]
    return charts.responsive(charts.stacked_bars, days=day_list, series=series, fmt=fmt, limit=limit,
                             label=f"Daily spend of {budget.name}, last {days} days")


# --- spend per day by feature and by model ----------------------------------------------------


def spend_by_day(*, tenant: Tenant, dimension: str, days: int = 30, now: datetime | None = None):
    """Return (svg, legend rows) of daily spend stacked by ``feature`` or ``model``."""
    today = local_today(tenant, now)
    day_list = day_range(today - timedelta(days=days - 1), today)
    field = "feature__name" if dimension == "feature" else "model"
    rows = (
        UsageRollup.objects.filter(tenant=tenant, day__gte=day_list[0], day__lte=today)
        .values("day", field)
        .annotate(cost=Sum("cost_nano"))
        .order_by()
    )
    by_name: dict[str, dict[date, int]] = {}
    for row in rows:
        by_name.setdefault(row[field], {})[row["day"]] = row["cost"] or 0
    if not by_name:
        return None, []
    ranked = sorted(by_name, key=lambda n: -sum(by_name[n].values()))
    shown, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    series = [
        charts.Series(name, charts.colour_for(i), [by_name[name].get(d, 0) for d in day_list])
        for i, name in enumerate(shown)
    ]
    if rest:
        series.append(
            charts.Series(
                f"{len(rest)} others", charts.OTHER_COLOUR,
                [sum(by_name[n].get(d, 0) for n in rest) for d in day_list],
            )
        )
    svg = charts.responsive(charts.stacked_bars, days=day_list, series=series,
                            label=f"Spend per day by {dimension}, last {days} days")
    legend = [{"name": s.name, "colour": s.colour, "total": sum(s.values)} for s in series]
    return svg, legend


def spend_totals(*, tenant: Tenant, now: datetime | None = None) -> dict[str, int]:
    """Return today's, this week's (from Monday) and this month's spend, in nano-USD."""
    today = local_today(tenant, now)
    month_start = today.replace(day=1)
    week_start = today - timedelta(days=today.weekday())
    first = min(month_start, week_start)
    daily = _daily(UsageRollup.objects.filter(tenant=tenant, day__gte=first, day__lte=today), "cost_nano")
    return {
        "today": daily.get(today, 0),
        "week": sum(v for d, v in daily.items() if d >= week_start),
        "month": sum(v for d, v in daily.items() if d >= month_start),
    }


def primary_budget(*, tenant: Tenant) -> Budget | None:
    """Return the budget the dashboard's cumulative chart draws: the tenant's monthly USD budget."""
    budgets = list(
        budget_list(tenant=tenant).filter(active=True, limit_nano__isnull=False, period__in=[Period.MONTH, Period.WEEK])
        .exclude(scope=Scope.RUN)
    )

    def preference(b: Budget) -> tuple:
        return (b.period != Period.MONTH, b.scope != Scope.TENANT, bool(b.model_families), -(b.limit_nano or 0))

    return min(budgets, key=preference) if budgets else None


# --- usage explorer ----------------------------------------------------------------------

EXPLORER_GROUPS = {"day": "day", "feature": "feature__key", "model": "model", "service_tier": "service_tier"}
EXPLORER_SUMS = (
    "calls", "cost_nano", "input_tokens", "output_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
    "cache_read_tokens", "web_search_requests", "truncations",
)
EXPLORER_MAX_ROWS = 5000


def usage_rows(
    *,
    tenant: Tenant,
    start: date,
    end: date,
    group_by: list[str],
    feature=None,
    model: str = "",
    service_tier: str = "",
    limit: int | None = EXPLORER_MAX_ROWS,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return usage sums grouped by ``group_by`` over tenant-local days start..end, and the totals."""
    rollups = UsageRollup.objects.filter(tenant=tenant, day__gte=start, day__lte=end)
    if feature is not None:
        rollups = rollups.filter(feature=feature)
    if model:
        rollups = rollups.filter(model=model)
    if service_tier:
        rollups = rollups.filter(service_tier=service_tier)
    sums = {name: Sum(name) for name in EXPLORER_SUMS}
    columns = [EXPLORER_GROUPS[g] for g in group_by]
    totals = {k: v or 0 for k, v in rollups.aggregate(**sums).items()}
    if not columns:
        return [], totals
    ordering = [f"-{c}" if c == "day" else c for c in columns]
    rows = []
    grouped = rollups.values(*columns).annotate(**sums).order_by(*ordering)
    for row in grouped[:limit] if limit is not None else grouped:
        rows.append({**{g: row[EXPLORER_GROUPS[g]] for g in group_by}, **{k: row[k] or 0 for k in EXPLORER_SUMS}})
    return rows, totals


def models_used(*, tenant: Tenant) -> list[str]:
    return list(UsageRollup.objects.filter(tenant=tenant).values_list("model", flat=True).distinct().order_by("model"))


# --- alerts and reconciliation -------------------------------------------------------------


def recent_alerts(*, tenant: Tenant, budget: Budget | None = None, limit: int = 8) -> list:
    """Return the newest alerts (of one budget if given) with their deliveries."""
    return list(alert_list(tenant=tenant, budget_id=budget.pk if budget is not None else None)[:limit])


def channel_deliveries(*, channel, limit: int = 50) -> list:
    """Return a channel's latest deliveries with their alerts."""
    return list(
        Notification.objects.filter(channel=channel, alert__tenant_id=channel.tenant_id)
        .select_related("alert").order_by("-created_at", "-id")[:limit]
    )


def connection_status_reason(connection) -> str:
    """Return why a connection is not syncing (paused, failing), or "" when it is."""
    if not connection.enabled:
        reason = "Paused: syncing is switched off for this connection, so Anthropic is not asked."
        if connection.last_error:
            reason += f" The last sync before that failed: {connection.last_error}"
        return reason + " An owner can test it and switch it on under Provider."
    if connection.status in ("error", "failing") and connection.last_error:
        return f"Sync {connection.get_status_display().lower()}: {connection.last_error}"
    return ""


def reconciliation_status(*, tenant: Tenant, days: int = 7, now: datetime | None = None) -> dict[str, Any] | None:
    """Return the provider connection's sync state and the last days' metered vs billed spend."""
    connection = connection_get(tenant=tenant)
    if connection is None:
        return None
    today = local_today(tenant, now)
    rows = []
    for day in reconciliation_compute(tenant=tenant, start=today - timedelta(days=days), end=today - timedelta(days=1)):
        rows.append({
            "day": day.day, "metered": day.metered_nano, "provider": day.provider_nano,
            "drift_pct": day.drift_pct, "over": day.drifting,
        })
    synced = [t for t in (connection.usage_synced_at, connection.cost_synced_at) if t is not None]
    return {
        "connection": connection,
        "status": connection.status if connection.enabled else "disabled",
        "status_label": connection.get_status_display() if connection.enabled else "Paused",
        "status_reason": connection_status_reason(connection),
        "last_synced": max(synced) if synced else None,
        "days": list(reversed(rows)),
    }


FEATURE_STATUS = {
    "ok": ("Matches", "ok"),
    "provider_higher": ("Anthropic higher", "over"),
    "ledger_higher": ("Ledger higher", "over"),
    "open": ("Not judged yet", ""),
    "not_synced": ("Not synced", ""),
}
FEATURE_DAYS = 14


def feature_reconciliation_day(*, tenant: Tenant, day: date | None = None, now: datetime | None = None
                               ) -> dict[str, Any] | None:
    """Return one UTC day of per-feature reconciliation for the provider page, and the days to pick from.

    None without a connection. Without ``day`` (or one outside the last two weeks): yesterday, UTC,
    or the day before while yesterday cannot be judged yet.
    """
    if connection_get(tenant=tenant) is None:
        return None
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    days = [today - timedelta(days=n) for n in range(FEATURE_DAYS)]
    if day not in days:
        judged = now >= datetime.combine(today, time(), tzinfo=UTC) + USAGE_SETTLES_AFTER
        day = today - timedelta(days=1 if judged else 2)
    (feature_day,) = feature_reconciliation_compute(tenant=tenant, start=day, end=day, now=now)
    rows = []
    for line in feature_day.features:
        label, badge = FEATURE_STATUS[line.status]
        rows.append({
            "key": line.feature_key, "name": line.feature_name, "mapped_ids": line.mapped_ids,
            "provider": line.provider_usage_nano, "billed": line.provider_cost_nano,
            "bill_diff": line.bill_diff_nano, "bill_drifting": line.bill_drifting,
            "ledger": line.metered_nano, "diff": line.usage_diff_nano, "pct": line.usage_drift_pct,
            "unpriced_tokens": line.unpriced_tokens, "status": line.status, "label": label, "badge": badge,
        })
    return {"day": day, "days": days, "rows": rows, "unattributed": feature_day.unattributed_usage_nano}
