"""Reads of budgets, windows and holds. Every selector takes its tenant."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from django.core.cache import cache
from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from budgets.forecast import HourlySpend, Profile, history_bounds, profile_build
from budgets.models import Budget, BudgetWindow, Hold, Scope
from budgets.periods import window_bounds
from governance.models import Feature, Tenant
from usage.models import UsageEvent

logger = logging.getLogger(__name__)

# What a budget counts as tokens: every token a call reads or writes (usage.services.event_tokens).
EVENT_TOKENS = (
    F("input_tokens") + F("output_tokens") + F("cache_write_5m_tokens") + F("cache_write_1h_tokens")
    + F("cache_read_tokens")
)
# A profile is read from the ledger once a day per budget, then kept here.
PROFILE_CACHE_SECONDS = 26 * 3600


def budget_list(*, tenant: Tenant, feature: Feature | None = None) -> QuerySet[Budget]:
    budgets = Budget.objects.filter(tenant=tenant).select_related("feature")
    if feature is not None:
        budgets = budgets.filter(feature=feature)
    return budgets


def budget_get(*, tenant: Tenant, budget_id: uuid.UUID) -> Budget | None:
    return budget_list(tenant=tenant).filter(pk=budget_id).first()


def hold_get(*, tenant: Tenant, hold_id: uuid.UUID) -> Hold | None:
    return Hold.objects.filter(tenant=tenant, pk=hold_id).first()


def current_window(budget: Budget, *, at: datetime | None = None, run_id: str = "") -> BudgetWindow:
    """Return the budget's window containing ``at``, unsaved and empty if none exists yet."""
    start, end = window_bounds(budget.period, at or timezone.now(), budget.tenant.tz)
    window = BudgetWindow.objects.filter(budget=budget, start=start, run_id=run_id).first()
    return window or BudgetWindow(budget=budget, start=start, end=end, run_id=run_id)


def window_full(window: BudgetWindow) -> bool:
    """Return whether spent + reserved already reach one of the window's limits (nothing more fits)."""
    budget = window.budget
    return (
        (budget.limit_nano is not None and window.spent_nano + window.reserved_nano >= budget.limit_nano)
        or (budget.limit_tokens is not None and window.spent_tokens + window.reserved_tokens >= budget.limit_tokens)
    )


def least_remaining(windows: Iterable[BudgetWindow], *, unit: str) -> int | None:
    """Return the smallest amount left under these windows' limits in ``unit`` (usd: nano-USD), or None."""
    left = []
    for window in windows:
        limit = window.budget.limit_nano if unit == "usd" else window.budget.limit_tokens
        if limit is not None:
            used = window.spent_nano + window.reserved_nano if unit == "usd" else (
                window.spent_tokens + window.reserved_tokens)
            left.append(max(limit - used, 0))
    return min(left) if left else None


# --- forecast inputs -----------------------------------------------------------------------


def budget_events(budget: Budget) -> QuerySet[UsageEvent]:
    """Return the ledger's calls a budget counts: its tenant's, its feature's, its model families'."""
    events = UsageEvent.objects.filter(tenant_id=budget.tenant_id)
    if budget.feature_id is not None:
        events = events.filter(feature_id=budget.feature_id)
    if budget.model_families:
        events = events.filter(family__in=list(budget.model_families))
    return events


def budget_profile(budget: Budget, *, now: datetime) -> Profile | None:
    """Return the budget's usual spend per hour of the week from its trailing weeks (None: under a week).

    Read from the ledger, grouped by hour in the database, once a day per budget (cached):
    the history ends at today's local midnight, so it cannot change until tomorrow.
    """
    if budget.scope == Scope.RUN:
        return None
    tz = budget.tenant.tz
    today = now.astimezone(tz).date()
    families = ",".join(sorted(budget.model_families or []))
    # Budgets counting the same calls share a profile. The tenant's creation time keeps a
    # reused primary key (a test database rolled back) from reading another tenant's entry.
    tenant = budget.tenant
    key = (
        f"forecast:profile:v2:{tenant.pk}:{tenant.created_at.timestamp()}:{budget.feature_id}:{families}:"
        f"{tenant.timezone}:{today}"
    )
    if key in _profiles:
        return _profiles[key]
    cached = _cache_get(key)
    if cached is not None:
        _remember(key, cached or None)
        return cached or None
    start, end = history_bounds(today=today, tz=tz)
    rows = (
        budget_events(budget)
        .filter(occurred_at__gte=start, occurred_at__lt=end)
        .annotate(hour=TruncHour("occurred_at", tzinfo=UTC))
        .values("hour")
        .annotate(nano=Sum("cost_nano"), tokens=Sum(EVENT_TOKENS), calls=Count("pk"))
        .order_by()
    )
    profile = profile_build(
        (HourlySpend(r["hour"], r["nano"] or 0, r["tokens"] or 0, r["calls"] or 0) for r in rows),
        today=today, tz=tz,
    )
    _cache_set(key, profile or False)
    _remember(key, profile)
    return profile


# The sweep asks for the same few profiles once per window each minute: a process keeps the
# latest it read (keys name the day, so yesterday's are never read again).
_profiles: dict[str, Profile | None] = {}
PROFILES_KEPT = 5000


def _remember(key: str, profile: Profile | None) -> None:
    if len(_profiles) >= PROFILES_KEPT:
        _profiles.clear()
    _profiles[key] = profile


def forget_profiles() -> None:
    """Drop the profiles this process keeps (tests whose history changes under them)."""
    _profiles.clear()


def budget_spend_since(budget: Budget, *, unit: str, since: datetime, now: datetime) -> int:
    """Return what the budget's calls spent from ``since`` to ``now`` (nano-USD or tokens)."""
    expression = Sum("cost_nano") if unit == "usd" else Sum(EVENT_TOKENS)
    events = budget_events(budget).filter(occurred_at__gte=since, occurred_at__lte=now)
    return events.aggregate(v=expression)["v"] or 0


def _cache_get(key: str):
    try:
        return cache.get(key)
    except Exception:  # a cache outage costs a query, never a page
        logger.warning("cache unavailable", exc_info=True)
        return None


def _cache_set(key: str, value) -> None:
    try:
        cache.set(key, value, timeout=PROFILE_CACHE_SECONDS)
    except Exception:
        logger.warning("cache unavailable", exc_info=True)
