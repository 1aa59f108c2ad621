"""Threshold, exhaustion and forecast evaluation of budget windows.

Thresholds count *spent* only, never *reserved*: holds are worst cases that are mostly
released, so counting them would announce spend that never happens. USD and tokens are
compared separately against their own limits; a window crosses a threshold when either does.

Only open windows are alerted. A window that has closed is history: usage reported late
into it (a backfill, a late commit) still counts there, but nobody can act on it any more,
so it raises nothing. Every title names its window ("on Dec 1", "in the week of Nov 30",
"in November"), and the page and the alert read the same window counters.

Each alert is claimed by a dedup key (unique per tenant), so racing evaluators raise it once:

- ``threshold:<window>:<percent>`` — once per window and threshold; a new window re-arms it.
  Only the highest threshold crossed is raised, so a jump from 10 % to 85 % says "80 %"
  once instead of "50 %" and "80 %" together.
- ``exhausted:<window>`` — the first denial in a window whose spend has reached its limit
  (a call refused because it is bigger than what remains says so in its denial reason, but
  the budget is not exhausted).
- ``overspent:<window>`` — a ``block`` or ``downgrade`` budget's spend went past its limit.
  Holds never grant past such a limit, so only spend that no live hold covered gets there (a
  commit of another model or of more than was held, a late commit, usage reported without an
  allowance). It is recorded because it was spent, flagged ``off_hold``, and announced once.
- Run budgets give every agent run its own window, so announcing each run would flood the
  channels: their threshold and exhaustion alerts are keyed by budget and (tenant-local)
  day instead, ``threshold:run:<budget>:<day>:<percent>``, naming the first run that got there.
- ``forecast:<window>`` — the forecast (``budgets.forecast``: the trailing weeks' weekday
  and hour-of-day pattern, scaled to this window, or a spike assumed to go on) ends the
  window above its limit.

Commits and usage reports announce the windows they charged (``budgets.signals``) inside
their transaction; after it commits, a cheap check decides whether a threshold may have been crossed, and only then is
evaluation enqueued. The beat task ``budgets_evaluate`` re-checks every live window each
minute, so a lost task (broker down) only delays an alert, and it computes forecasts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.dispatch import receiver
from django.utils import timezone

from budgets.models import Budget, BudgetWindow, Enforcement, Period, Scope
from budgets.projections import (
    Measure,
    Projection,
    WindowForecast,
    measures_of,
    window_forecast,
    window_measures,
    window_projections,
)
from budgets.signals import windows_charged, windows_refused
from governance import queue
from governance.notify.alerts import alert_raise
from governance.notify.models import Alert
from usage.models import NANO

logger = logging.getLogger(__name__)

# Open-ended run windows stop being swept this long after they were created.
RUN_WINDOW_SWEEP_AGE = timedelta(days=7)
# A run window has no end: a run counts as under way while it had a call this recently.
RUN_ACTIVE_WITHIN = timedelta(hours=24)
SWEEP_CHUNK = 500


# --- What the budget layer announces (budgets.signals) ---------------------------------------


@receiver(windows_charged, dispatch_uid="alerting.windows_charged")
def _windows_charged(sender, *, windows: list[BudgetWindow], **kwargs) -> None:
    windows_evaluate_later([w.id for w in windows], windows=windows)


@receiver(windows_refused, dispatch_uid="alerting.windows_refused")
def _windows_refused(sender, *, window_ids: list[int], **kwargs) -> None:
    window_denied(window_ids)


def windows_evaluate_later(window_ids: list[int], *, windows: list[BudgetWindow] | None = None) -> None:
    """Enqueue evaluation of these windows after the current transaction commits.

    ``windows``, with their budgets attached and counters as this transaction left them,
    spare the check a query.
    """
    ids = sorted({int(i) for i in window_ids})
    if ids:
        rows = None if windows is None else [_row_of(w) for w in windows if w.budget.active]
        transaction.on_commit(lambda: _evaluate_if_crossed(ids, rows), robust=True)


def window_denied(window_ids: list[int]) -> None:
    """Note that a call was denied on these windows (raises 'exhausted' once per window)."""
    ids = sorted({int(i) for i in window_ids})
    if ids:
        transaction.on_commit(lambda: windows_exhausted(window_ids=ids), robust=True)


def _row_of(window: BudgetWindow) -> tuple:
    budget = window.budget
    return (
        window.pk, budget.tenant_id, window.spent_nano, window.spent_tokens, budget.limit_nano,
        budget.limit_tokens, budget.thresholds, budget.pk, budget.scope, budget.tenant.timezone,
        window.start, window.end, budget.enforcement,
    )


def window_is_open(start: datetime, end: datetime | None, *, now: datetime) -> bool:
    """Return whether a window with these bounds is under way at ``now``."""
    return start <= now and (end is None or now < end)


def _evaluate_if_crossed(window_ids: list[int], rows: Iterable[tuple[Any, ...]] | None = None) -> None:
    """Enqueue evaluation only when some window is past a threshold not yet alerted.

    Runs after every commit and usage report, so it reads bare values (no model instances)
    in one query, or none when the caller has them, and asks about alerts only when a
    threshold is crossed.
    """
    if rows is None:
        rows = (
            BudgetWindow.objects.filter(pk__in=window_ids, budget__active=True)
            .order_by()
            .values_list(
                "pk", "budget__tenant_id", "spent_nano", "spent_tokens",
                "budget__limit_nano", "budget__limit_tokens", "budget__thresholds",
                "budget_id", "budget__scope", "budget__tenant__timezone", "start", "end", "budget__enforcement",
            )
        )
    now = timezone.now()
    wanted: dict[str, tuple[int, int]] = {}
    for (
        pk, tenant_id, spent_nano, spent_tokens, limit_nano, limit_tokens, thresholds, budget_id, scope, tz,
        start, end, enforcement,
    ) in rows:
        if not window_is_open(start, end, now=now):
            continue
        measures = measures_of(spent_nano, limit_nano, spent_tokens, limit_tokens)
        threshold = _highest_crossed(thresholds, measures)
        if threshold is not None:
            key = _threshold_key(window_pk=pk, budget_pk=budget_id, scope=scope, tz=tz, percent=threshold, now=now)
            wanted[key] = (tenant_id, pk)
        if _overspent(enforcement, measures):
            wanted[_overspent_key(window_pk=pk, budget_pk=budget_id, scope=scope, tz=tz, now=now)] = (tenant_id, pk)
    if not wanted:
        return
    raised = set(
        Alert.objects.filter(
            tenant_id__in={tenant_id for tenant_id, _ in wanted.values()}, dedup_key__in=list(wanted)
        )
        .order_by()
        .values_list("dedup_key", flat=True)
    )
    pending = sorted({pk for key, (_, pk) in wanted.items() if key not in raised})
    if pending:
        enqueue_window_evaluation(pending)


def enqueue_window_evaluation(window_ids: list[int]) -> None:
    ids = sorted(set(window_ids))
    if not queue.enqueue("budgets.tasks.evaluate_windows", [ids]):
        # Without a broker, evaluate here: recording an alert is a few queries, and it stops
        # every later commit on the window from trying again. Deliveries wait for the sweep.
        windows_evaluate(window_ids=ids)


# --- Arithmetic --------------------------------------------------------------------------------


def _valid_thresholds(values) -> list[int]:
    values = values if isinstance(values, list) else []
    return sorted({t for t in values if isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000})


def budget_thresholds(budget: Budget) -> list[int]:
    """Return the budget's valid threshold percents, ascending (bad entries are ignored)."""
    return _valid_thresholds(budget.thresholds)


def _highest_crossed(thresholds, measures: list[Measure]) -> int | None:
    crossed = [t for t in _valid_thresholds(thresholds) if any(m.crossed(t) for m in measures)]
    return crossed[-1] if crossed else None


def highest_threshold_crossed(window: BudgetWindow) -> int | None:
    return _highest_crossed(window.budget.thresholds, window_measures(window))


# --- Evaluation ----------------------------------------------------------------------------------


def _threshold_key(*, window_pk: int, budget_pk, scope: str, tz: str, percent: int, now: datetime) -> str:
    if scope == Scope.RUN:
        return f"threshold:run:{budget_pk.hex}:{_local_day(now, tz)}:{percent}"
    return f"threshold:{window_pk}:{percent}"


def _local_day(now: datetime, tz: str) -> str:
    return now.astimezone(ZoneInfo(tz)).date().isoformat()


def threshold_key(window: BudgetWindow, percent: int, *, now: datetime) -> str:
    budget = window.budget
    return _threshold_key(
        window_pk=window.pk, budget_pk=budget.pk, scope=budget.scope, tz=budget.tenant.timezone,
        percent=percent, now=now,
    )


def _overspent(enforcement: str, measures: list[Measure]) -> bool:
    """Whether an enforcing budget's spend went past its limit: only calls no hold covered get there."""
    return enforcement != Enforcement.ALERT and any(m.spent > m.limit for m in measures)


def _overspent_key(*, window_pk: int, budget_pk, scope: str, tz: str, now: datetime) -> str:
    if scope == Scope.RUN:
        return f"overspent:run:{budget_pk.hex}:{_local_day(now, tz)}"
    return f"overspent:{window_pk}"


def overspent_key(window: BudgetWindow, *, now: datetime) -> str:
    budget = window.budget
    return _overspent_key(
        window_pk=window.pk, budget_pk=budget.pk, scope=budget.scope, tz=budget.tenant.timezone, now=now
    )


def forecast_key(window: BudgetWindow) -> str:
    return f"forecast:{window.pk}"


def exhausted_key(window: BudgetWindow, *, now: datetime) -> str:
    budget = window.budget
    if budget.scope == Scope.RUN:
        return f"exhausted:run:{budget.pk.hex}:{_local_day(now, budget.tenant.timezone)}"
    return f"exhausted:{window.pk}"


def windows_evaluate(*, window_ids: list[int], now: datetime | None = None) -> int:
    """Raise the threshold alerts these windows are due; return how many were raised.

    Windows that are not open at ``now`` raise nothing (see the module's docstring).
    """
    now = now or timezone.now()
    windows = _windows_with_budgets().filter(pk__in=window_ids)
    return _evaluate(list(windows), now=now, forecasts=False)


def budgets_evaluate(*, now: datetime | None = None) -> int:
    """Sweep every open window: thresholds a lost task missed, and forecasts; return alerts raised."""
    now = now or timezone.now()
    live = (
        _windows_with_budgets()
        .filter(start__lte=now)
        .filter(Q(spent_nano__gt=0) | Q(spent_tokens__gt=0))
        .filter(
            Q(end__gt=now)
            | Q(end__isnull=True, budget__period=Period.TOTAL)
            | Q(end__isnull=True, budget__scope=Scope.RUN, created_at__gte=now - RUN_WINDOW_SWEEP_AGE)
        )
        .order_by("pk")
    )
    raised = 0
    last_pk = 0
    while True:
        chunk = list(live.filter(pk__gt=last_pk)[:SWEEP_CHUNK])
        if not chunk:
            return raised
        raised += _evaluate(chunk, now=now, forecasts=True)
        last_pk = chunk[-1].pk


def _windows_with_budgets():
    return BudgetWindow.objects.filter(budget__active=True).select_related("budget__tenant", "budget__feature")


def _evaluate(windows: list[BudgetWindow], *, now: datetime, forecasts: bool) -> int:
    candidates: dict[tuple[int, str], tuple[str, BudgetWindow, object]] = {}
    for window in windows:
        if not window_is_open(window.start, window.end, now=now):
            continue
        threshold = highest_threshold_crossed(window)
        if threshold is not None:
            key = threshold_key(window, threshold, now=now)
            candidates[(window.budget.tenant_id, key)] = ("threshold", window, threshold)
        if _overspent(window.budget.enforcement, window_measures(window)):
            candidates[(window.budget.tenant_id, overspent_key(window, now=now))] = ("overspent", window, None)
        if forecasts and window.budget.forecast_alert:
            forecast = window_forecast(window, now=now)
            projections = forecast.outlooks
            # Once spend is past the limit the threshold alerts have said it; a forecast is moot.
            if any(p.alarming for p in projections) and not any(p.spent >= p.limit for p in projections):
                candidates[(window.budget.tenant_id, forecast_key(window))] = ("forecast", window, forecast)
    if not candidates:
        return 0
    existing = set(
        Alert.objects.filter(
            tenant_id__in={t for t, _ in candidates}, dedup_key__in=[k for _, k in candidates]
        ).values_list("tenant_id", "dedup_key")
    )
    due = {k: v for k, v in candidates.items() if k not in existing}
    idle = _idle_runs([w for _, w, _ in due.values() if w.budget.scope == Scope.RUN], now=now)
    raised = 0
    for _, (kind, window, extra) in sorted(due.items(), key=lambda item: item[0][1]):
        if window.pk in idle:
            continue
        if kind == "threshold":
            alert = _raise_threshold(window, cast(int, extra), now=now)
        elif kind == "overspent":
            alert = _raise_overspent(window, now=now)
        else:
            alert = _raise_forecast(window, cast(WindowForecast, extra), now=now)
        raised += alert is not None
    return raised


def _idle_runs(windows: list[BudgetWindow], *, now: datetime) -> set[int]:
    """Return the ids of run windows whose run made no call within ``RUN_ACTIVE_WITHIN``.

    A run's window never closes, so a run reported long after it finished (a backfill of
    batch results) would otherwise be announced as if it were running now. Asked only for
    runs about to be alerted, so the ledger is read rarely.
    """
    from usage.models import UsageEvent

    if not windows:
        return set()
    active: set[tuple[int, str]] = set()
    by_tenant: dict[int, set[str]] = {}
    for window in windows:
        by_tenant.setdefault(window.budget.tenant_id, set()).add(window.run_id)
    for tenant_id, run_ids in by_tenant.items():
        recent = (
            UsageEvent.objects.filter(tenant_id=tenant_id, run_id__in=sorted(run_ids), occurred_at__gte=now - RUN_ACTIVE_WITHIN)
            .order_by().values_list("run_id", flat=True).distinct()
        )
        active.update((tenant_id, run_id) for run_id in recent)
    return {w.pk for w in windows if (w.budget.tenant_id, w.run_id) not in active}


def windows_exhausted(*, window_ids: list[int], now: datetime | None = None) -> int:
    """Raise 'exhausted' for each open window whose spend has reached its limit; return how many.

    Runs in the denying request, after its transaction. A call can be refused while the
    budget still has room (it asked for more than remains, or live holds fill the rest):
    that is no exhaustion, and its denial reason says so. Denials keep coming while a window
    is full, so a cache mark skips the database once the alert is known to exist.
    """
    now = now or timezone.now()
    raised = 0
    for window_id in window_ids:
        mark = f"notify:exhausted:{window_id}"
        if _cache_get(mark):
            continue
        window = _windows_with_budgets().filter(pk=window_id).first()
        if window is None:
            continue
        if not window_is_open(window.start, window.end, now=now):
            continue
        if not any(m.reached for m in window_measures(window)):
            continue
        alert = _raise_exhausted(window, now=now)
        raised += alert is not None
        _cache_set(mark, timeout=int((window.end - now).total_seconds()) + 60 if window.end else 86_400)
    return raised


def _cache_get(key: str):
    try:
        return cache.get(key)
    except Exception:  # a cache outage must not cost an alert
        logger.warning("cache unavailable", exc_info=True)
        return None


def _cache_set(key: str, *, timeout: int) -> None:
    try:
        cache.set(key, 1, timeout=max(timeout, 60))
    except Exception:
        logger.warning("cache unavailable", exc_info=True)


# --- Alert content -----------------------------------------------------------------------------


def format_usd(nano: int) -> str:
    value = Decimal(nano) / NANO
    if value == 0 or abs(value) >= 1:
        return f"${value.quantize(Decimal('0.01'), ROUND_HALF_UP):,}"
    return f"${value.quantize(Decimal('0.0001'), ROUND_HALF_UP)}"


def format_amount(unit: str, amount: int) -> str:
    return format_usd(amount) if unit == "usd" else f"{amount:,} tokens"


def _scope_text(window: BudgetWindow) -> str:
    budget = window.budget
    if budget.scope == Scope.FEATURE:
        text = f"Feature {budget.feature.key}" if budget.feature is not None else "Feature"
    elif budget.scope == Scope.RUN:
        text = f"Run {window.run_id}" + (f" of feature {budget.feature.key}" if budget.feature is not None else "")
    else:
        text = "Whole tenant"
    if budget.model_families:
        text += f" ({', '.join(budget.model_families)} models)"
    return text


def window_phrase(window: BudgetWindow) -> str:
    """Return how a title names the window: "on Dec 1", "in the week of Nov 30", "in November".

    Empty for windows without an end (a total budget's, or a run's, which the title names).
    """
    if window.end is None:
        return ""
    start = window.start.astimezone(window.budget.tenant.tz)
    period = window.budget.period
    if period == Period.DAY:
        return f"on {start:%b} {start.day}"
    if period == Period.WEEK:
        return f"in the week of {start:%b} {start.day}"
    return f"in {start:%B}"


def _with_window(text: str, window: BudgetWindow) -> str:
    phrase = window_phrase(window)
    return f"{text} {phrase}" if phrase else text


def _window_text(window: BudgetWindow) -> str:
    if window.end is None:
        return "Whole run" if window.budget.scope == Scope.RUN else "All time"
    tz = window.budget.tenant.tz
    start = window.start.astimezone(tz)
    last_day = (window.end - timedelta(microseconds=1)).astimezone(tz)
    if window.budget.period == Period.DAY:
        return f"{start:%a %d %b %Y}"
    return f"{start:%d %b} – {last_day:%d %b %Y} ({window.budget.period})"


def _reach_text(window: BudgetWindow, when: datetime) -> str:
    return f"{when.astimezone(window.budget.tenant.tz):%a %d %b %Y, %H:%M} ({window.budget.tenant.timezone})"


def _facts(window: BudgetWindow, *, now: datetime, projections: list[Projection] | None = None) -> dict:
    measures = window_measures(window)
    if projections is None:
        projections = window_projections(window, now=now)
    percents = [f"{m.percent}%" + (" of tokens" if m.unit == "tokens" and len(measures) > 1 else "") for m in measures if m.percent is not None]
    reaches = [p.reaches_limit_at for p in projections if p.reaches_limit_at is not None]
    return {
        "budget": window.budget.name,
        "scope": _scope_text(window),
        "window": _window_text(window),
        "spent": "; ".join(f"{format_amount(m.unit, m.spent)} / {format_amount(m.unit, m.limit)}" for m in measures),
        "percent": ", ".join(percents),
        "forecast": "; ".join(
            f"{format_amount(p.unit, p.projected)}" + (" (over the limit)" if p.over else "") for p in projections
        ),
        "reaches_limit_at": _reach_text(window, min(reaches)) if reaches else "",
    }


def _data(window: BudgetWindow, facts: dict, **extra) -> dict:
    budget = window.budget
    return {
        "budget_id": budget.pk.hex,
        "window_id": window.pk,
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat() if window.end else None,
        "run_id": window.run_id or None,
        "spent_nano": window.spent_nano,
        "limit_nano": budget.limit_nano,
        "spent_tokens": window.spent_tokens,
        "limit_tokens": budget.limit_tokens,
        "facts": facts,
        **extra,
    }


def _raise(window: BudgetWindow, *, kind: str, key: str, title: str, body: str, data: dict, threshold=None):
    return alert_raise(
        tenant=window.budget.tenant,
        kind=kind,
        dedup_key=key,
        title=title,
        body=body,
        data=data,
        budget=window.budget,
        window=window,
        threshold=threshold,
    )


RUN_NOTE = " Other runs of this budget that get there today are not announced separately."


def _raise_threshold(window: BudgetWindow, percent: int, *, now: datetime):
    budget = window.budget
    facts = _facts(window, now=now)
    if percent >= 100:
        title = _with_window(f"{budget.name} has reached {percent}% of its limit", window)
    else:
        title = _with_window(f"{budget.name} has used {percent}% of its limit", window)
    crossed = [m for m in window_measures(window) if m.crossed(percent)]
    body = "; ".join(
        f"{format_amount(m.unit, m.spent)} of {format_amount(m.unit, m.limit)} spent ({m.percent}%)" for m in crossed
    ) + f" — {facts['window']}."
    if percent >= 100 and budget.enforcement == "block":
        body += " Calls that do not fit are now denied."
    if budget.scope == Scope.RUN:
        title = f"{budget.name}: run {window.run_id} " + title[len(budget.name) + 1 :]
        body += RUN_NOTE
    return _raise(
        window, kind="threshold", key=threshold_key(window, percent, now=now), title=title, body=body,
        data=_data(window, facts, threshold=percent), threshold=percent,
    )


def _raise_forecast(window: BudgetWindow, forecast: WindowForecast, *, now: datetime):
    budget = window.budget
    projections = forecast.outlooks
    facts = _facts(window, now=now, projections=projections)
    over = [p for p in projections if p.alarming]
    title = _with_window(f"{budget.name} is on course to exceed its limit", window)
    body = "; ".join(
        f"At this pace the window ends at {format_amount(p.unit, p.projected)} "
        f"against a limit of {format_amount(p.unit, p.limit)}" for p in over
    )
    if facts["reaches_limit_at"]:
        body += f"; the limit is reached around {facts['reaches_limit_at']}"
    body += f". {forecast.note}"
    reaches = [p.reaches_limit_at for p in over if p.reaches_limit_at]
    extra = {
        "projected_nano": next((p.projected for p in projections if p.unit == "usd"), None),
        "projected_tokens": next((p.projected for p in projections if p.unit == "tokens"), None),
        "reaches_limit_at": min(reaches).isoformat() if reaches else None,
        "basis": next((p.basis for p in over), None),
        "forecast_note": forecast.note,
    }
    return _raise(window, kind="forecast", key=forecast_key(window), title=title, body=body, data=_data(window, facts, **extra))


def _raise_overspent(window: BudgetWindow, *, now: datetime):
    """A block or downgrade budget went past its limit: spend no hold covered, recorded because it was spent."""
    budget = window.budget
    facts = _facts(window, now=now)
    over = [m for m in window_measures(window) if m.spent > m.limit]
    amounts = "; ".join(
        f"{format_amount(m.unit, m.spent)} spent against a limit of {format_amount(m.unit, m.limit)}, "
        f"{format_amount(m.unit, m.spent - m.limit)} over" for m in over
    )
    title = _with_window(f"{budget.name} went past its limit", window)
    if budget.scope == Scope.RUN:
        title = f"{budget.name}: run {window.run_id} went past its limit"
    body = (
        f"{amounts} — {facts['window']}. Holds never grant past a {budget.enforcement} limit, so this "
        "is spend no live hold covered: a commit larger than its hold (another model, more tokens), "
        "a commit after its hold expired, or usage reported without an allowance. It is recorded, "
        "because it was spent, and flagged off_hold in the ledger (the usage explorer filters on it). "
        "Find the calls and the client that made them there."
    )
    if budget.scope == Scope.RUN:
        body += RUN_NOTE
    extra = {
        "over_nano": next((m.spent - m.limit for m in over if m.unit == "usd"), None),
        "over_tokens": next((m.spent - m.limit for m in over if m.unit == "tokens"), None),
    }
    return _raise(
        window, kind="overspent", key=overspent_key(window, now=now), title=title, body=body,
        data=_data(window, facts, **extra),
    )


def _raise_exhausted(window: BudgetWindow, *, now: datetime):
    budget = window.budget
    facts = _facts(window, now=now)
    title = _with_window(f"{budget.name} is exhausted", window) + ": calls are being denied"
    until = "until the window ends" if window.end else "until its limit is raised"
    body = (
        f"Spend has reached the limit ({facts['spent']}) — {facts['window']}. "
        f"Calls are denied {until}."
    )
    if budget.scope == Scope.RUN:
        title = f"{budget.name}: run {window.run_id} is exhausted, its calls are being denied"
        body += RUN_NOTE
    return _raise(window, kind="exhausted", key=exhausted_key(window, now=now), title=title, body=body, data=_data(window, facts))
