"""Reads of budgets, windows and holds. Every selector takes its tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from budgets.models import Budget, BudgetWindow, Hold
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
    budgets: Iterable[Budget] = budget_list(tenant=tenant).filter(active=True)
    if feature is not None:
        # Tenant budgets and feature-less run budgets cover every feature.
        budgets = [b for b in budgets if b.feature_id in (None, feature.pk)]
    return [window_status(current_window(b)) for b in budgets]


def budget_detail(budget: Budget, *, now: datetime | None = None) -> dict[str, Any]:
    """Return a budget's configuration with its current window status and forecast.

    The forecast is the alerts' own burn-rate projection (null until enough of the
    window has passed to trust a rate, and for windows without an end).
    """
    from budgets.alerting import window_projections

    now = now or timezone.now()
    window = current_window(budget, at=now)
    usd = next((p for p in window_projections(window, now=now) if p.unit == "usd"), None)
    data = window_status(window)
    data.update(
        feature=budget.feature.key if budget.feature is not None else None,
        model_families=budget.model_families,
        thresholds=budget.thresholds,
        forecast_alert=budget.forecast_alert,
        active=budget.active,
        forecast_usd=nano_to_usd(usd.projected) if usd else None,
        created_at=budget.created_at,
        updated_at=budget.updated_at,
    )
    return data
