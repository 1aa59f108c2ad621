"""Reads of budgets, windows and holds. Every selector takes its tenant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from budgets.models import Budget, BudgetWindow, Hold, Scope
from budgets.periods import window_bounds
from governance.api.fields import nano_to_usd
from governance.api.ids import public_id
from governance.models import Feature, Tenant


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


def window_status(window: BudgetWindow, *, binding: bool = False) -> dict[str, Any]:
    """Return the contract's budget status object for one window."""
    budget = window.budget
    remaining_usd = (
        None if budget.limit_nano is None else budget.limit_nano - window.spent_nano - window.reserved_nano
    )
    remaining_tokens = (
        None
        if budget.limit_tokens is None
        else budget.limit_tokens - window.spent_tokens - window.reserved_tokens
    )
    return {
        "id": public_id(budget),
        "name": budget.name,
        "scope": budget.scope,
        "period": budget.period,
        "enforcement": budget.enforcement,
        "run_id": window.run_id or None,
        "window_start": window.start,
        "window_end": window.end,
        "limit_usd": nano_to_usd(budget.limit_nano),
        "spent_usd": nano_to_usd(window.spent_nano),
        "reserved_usd": nano_to_usd(window.reserved_nano),
        "remaining_usd": nano_to_usd(remaining_usd),
        "limit_tokens": budget.limit_tokens,
        "spent_tokens": window.spent_tokens,
        "reserved_tokens": window.reserved_tokens,
        "remaining_tokens": remaining_tokens,
        "binding": binding,
    }


def budget_statuses(*, tenant: Tenant, feature: Feature | None = None) -> list[dict[str, Any]]:
    """Return the current-window status of the tenant's budgets (those touching ``feature`` if given).

    Run budgets have a window per run, so they are listed with their limits and no run's counters.
    """
    budgets = budget_list(tenant=tenant).filter(active=True)
    if feature is not None:
        budgets = [
            b for b in budgets
            if b.scope == Scope.TENANT or (b.feature_id in (None, feature.pk) and b.scope == Scope.RUN)
            or b.feature_id == feature.pk
        ]
    return [window_status(current_window(b)) for b in budgets]


def window_forecast_nano(window: BudgetWindow, *, now: datetime | None = None) -> int | None:
    """Return the spend projected at the window's end at the burn rate so far (None without an end)."""
    if window.end is None:
        return None
    now = now or timezone.now()
    total = (window.end - window.start).total_seconds()
    elapsed = min(max((now - window.start).total_seconds(), 0.0), total)
    if elapsed <= 0:
        return window.spent_nano
    # Integer arithmetic on microseconds keeps money exact.
    return window.spent_nano * int(total * 1_000_000) // int(elapsed * 1_000_000)


def budget_detail(budget: Budget, *, now: datetime | None = None) -> dict[str, Any]:
    """Return a budget's configuration with its current window status and forecast."""
    window = current_window(budget, at=now)
    data = window_status(window)
    data.update(
        feature=budget.feature.key if budget.feature_id else None,
        model_families=budget.model_families,
        thresholds=budget.thresholds,
        forecast_alert=budget.forecast_alert,
        active=budget.active,
        forecast_usd=nano_to_usd(window_forecast_nano(window, now=now)),
        created_at=budget.created_at,
        updated_at=budget.updated_at,
    )
    return data
