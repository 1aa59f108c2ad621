"""Thin Celery tasks for alerting: evaluate windows, deliver notifications, sweep what was missed.

Enqueueing never fails the caller: with the broker down, alerts and deliveries stay in the
database and the beat tasks (evaluate_budgets, deliver_pending) pick them up later.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task

logger = logging.getLogger(__name__)

# After a failed publish, skip the broker for this long: finding it down again costs
# seconds of connection attempts, and requests should not pay that on every commit.
BROKER_BACKOFF_SECONDS = 30
_broker_down_until = 0.0


def _enqueue(task, args: list, *, countdown: int | None = None) -> bool:
    """Send a task to the broker; return False (and log) when it is down."""
    global _broker_down_until
    if time.monotonic() < _broker_down_until:
        return False
    try:
        # No publish retries: a request thread must not wait on a dead broker.
        task.apply_async(args=args, countdown=countdown, retry=False)
    except Exception:  # kombu raises several types for an unreachable broker
        _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
        logger.warning("broker unavailable; %s%r left for the beat sweep", task.name, args, exc_info=True)
        return False
    return True


def enqueue_deliveries(notification_ids: list[int]) -> None:
    for notification_id in notification_ids:
        if not _enqueue(deliver_notification, [notification_id]):
            return  # the rest would fail the same way; the sweep has them


def enqueue_window_evaluation(window_ids: list[int]) -> None:
    ids = sorted(set(window_ids))
    if not _enqueue(evaluate_windows, [ids]):
        # Without a broker, evaluate here: recording an alert is a few queries, and it stops
        # every later commit on the window from trying again. Deliveries wait for the sweep.
        from budgets.alerting import windows_evaluate

        windows_evaluate(window_ids=ids)


@shared_task(ignore_result=True)
def deliver_notification(notification_id: int) -> None:
    from governance.notify.services import notification_deliver

    outcome = notification_deliver(notification_id=notification_id)
    if outcome.retry_in is not None:
        _enqueue(deliver_notification, [notification_id], countdown=outcome.retry_in)


@shared_task(ignore_result=True)
def deliver_pending() -> None:
    """Re-enqueue deliveries whose task was lost (broker down, worker died)."""
    from governance.notify.services import notifications_due_claim

    enqueue_deliveries(notifications_due_claim())


@shared_task(ignore_result=True)
def evaluate_windows(window_ids: list[int]) -> None:
    from budgets.alerting import windows_evaluate

    windows_evaluate(window_ids=window_ids)


@shared_task(ignore_result=True)
def evaluate_budgets() -> None:
    """Catch thresholds missed by the commit path, and compute forecasts."""
    from budgets.alerting import budgets_evaluate

    budgets_evaluate()
