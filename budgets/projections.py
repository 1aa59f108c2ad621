"""What a budget window is measured by, and where it is heading: limits and forecasts, read-only.

The alert layer (``budgets.alerting``) raises alerts from these; the API and the pages show
the same figures (``budgets.bodies``, the dashboard), so an alert and its page agree by
construction. The forecast model itself is ``budgets.forecast``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from budgets.forecast import Outlook, outlook
from budgets.models import Budget, BudgetWindow
from budgets.selectors import budget_profile, budget_spend_since


@dataclass(frozen=True)
class Measure:
    """One limited quantity of a window: USD (in nano-USD) or tokens."""

    unit: str  # "usd" or "tokens"
    spent: int
    limit: int

    def crossed(self, percent: int) -> bool:
        # Exact integer comparison: spent / limit >= percent / 100. Nothing spent crosses nothing.
        return self.spent > 0 and self.spent * 100 >= percent * self.limit

    @property
    def reached(self) -> bool:
        return self.spent >= self.limit

    @property
    def percent(self) -> Decimal | None:
        if self.limit <= 0:
            return None
        return (Decimal(self.spent) * 100 / Decimal(self.limit)).quantize(Decimal("0.1"), ROUND_HALF_UP)


def measures_of(spent_nano: int, limit_nano: int | None, spent_tokens: int, limit_tokens: int | None) -> list[Measure]:
    measures = []
    if limit_nano is not None:
        measures.append(Measure("usd", spent_nano, limit_nano))
    if limit_tokens is not None:
        measures.append(Measure("tokens", spent_tokens, limit_tokens))
    return measures


def window_measures(window: BudgetWindow) -> list[Measure]:
    budget = window.budget
    return measures_of(window.spent_nano, budget.limit_nano, window.spent_tokens, budget.limit_tokens)


Projection = Outlook


def window_projections(window: BudgetWindow, *, now: datetime) -> list[Outlook]:
    """Return the forecast of each measure at the window's end (``budgets.forecast``).

    Empty for windows without an end (total, run), for windows not under way, with less
    than a week of history, and while too little of the window has passed to tell.
    """
    return window_forecast(window, now=now).outlooks


def spend_outlook(budget: Budget, *, start: datetime, end: datetime, spent: int, limit: int, unit: str,
                  now: datetime, profile=None) -> Outlook | None:
    """Return the forecast of spend in ``start``..``end`` for the calls ``budget`` counts."""
    profile = profile or budget_profile(budget, now=now)

    def recent_spend(since: datetime) -> int:
        return budget_spend_since(budget, unit=unit, since=since, now=now)

    return outlook(unit=unit, spent=spent, limit=limit, start=start, end=end, now=now, profile=profile,
                   recent_spend=recent_spend)


@dataclass(frozen=True)
class WindowForecast:
    outlooks: list[Outlook]
    note: str  # the model behind the figure, or why there is none, for people


def window_forecast(window: BudgetWindow, *, now: datetime) -> WindowForecast:
    """Return the window's forecast with a sentence saying what it rests on."""
    budget = window.budget
    if window.end is None:
        return WindowForecast([], "No forecast: this window has no end.")
    if not window.start < now < window.end:
        return WindowForecast([], "No forecast: the window is not under way.")
    profile = budget_profile(budget, now=now)
    if profile is None:
        return WindowForecast([], "No forecast yet: it needs a week of this budget's history.")
    outlooks = []
    for m in window_measures(window):
        o = spend_outlook(budget, start=window.start, end=window.end, spent=m.spent, limit=m.limit, unit=m.unit,
                          now=now, profile=profile)
        if o is not None:
            outlooks.append(o)
    weeks = f"the last {profile.weeks} week{'s' if profile.weeks > 1 else ''}"
    if not outlooks:
        return WindowForecast([], f"No forecast: nothing is usually spent in this window (pattern of {weeks}).")
    if not all(o.settled for o in outlooks) and not any(o.basis == "spike" for o in outlooks):
        return WindowForecast(outlooks, (
            f"Early in the window: mostly the usual weekday and hour-of-day pattern of {weeks}; "
            f"no alert until a tenth of the usual spend is in."
        ))
    if any(o.basis == "spike" for o in outlooks):
        spike = next(o for o in outlooks if o.basis == "spike")
        ratio = f"{spike.recent / spike.recent_usual:.1f}×" if spike.recent_usual else "well above"
        return WindowForecast(outlooks, (
            f"The last two hours ran at {ratio} the usual rate; the forecast assumes that goes on "
            f"(weekday and hour-of-day pattern of {weeks})."
        ))
    return WindowForecast(outlooks, f"Based on the weekday and hour-of-day pattern of {weeks}.")
