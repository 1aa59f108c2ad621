"""Celery tasks of the budget layer: expire holds, evaluate windows' thresholds and forecasts."""

from __future__ import annotations

from celery import shared_task

from budgets import alerting, services


@shared_task
def expire_holds() -> int:
    """Release holds past their expiry (beat, every minute)."""
    return services.holds_expire()


@shared_task(ignore_result=True)
def evaluate_windows(window_ids: list[int]) -> None:
    """Raise the alerts these windows' counters call for (enqueued after a commit crosses a threshold)."""
    alerting.windows_evaluate(window_ids=window_ids)


@shared_task(ignore_result=True)
def evaluate_budgets() -> None:
    """Catch thresholds missed by the commit path, and compute forecasts (beat, every minute)."""
    alerting.budgets_evaluate()
