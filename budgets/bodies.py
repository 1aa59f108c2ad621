"""The API's budget bodies: a window's status, a budget's detail, with money and ids formatted.

Selectors return rows and integers (nano-USD); this module, of the API layer, shapes them
into the contract's objects (docs/api.md), for the budget endpoints and the feature detail.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.utils import timezone

from budgets import selectors
from budgets.models import Budget, BudgetWindow
from budgets.projections import window_projections
from governance.api.ids import public_id
from governance.models import Feature, Tenant
from usage.money import nano_to_usd


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
    budgets: Iterable[Budget] = selectors.budget_list(tenant=tenant).filter(active=True)
    if feature is not None:
        # Tenant budgets and feature-less run budgets cover every feature.
        budgets = [b for b in budgets if b.feature_id in (None, feature.pk)]
    return [window_status(selectors.current_window(b)) for b in budgets]


def budget_detail(budget: Budget, *, now: datetime | None = None) -> dict[str, Any]:
    """Return a budget's configuration with its current window status and forecast.

    The forecast is the alerts' own (``budgets.forecast``; null with less than a week of
    history, and for windows without an end).
    """
    now = now or timezone.now()
    window = selectors.current_window(budget, at=now)
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
