"""Thin Celery tasks for delivery: send one notification, sweep what was missed.

Enqueueing never fails the caller: with the broker down, deliveries stay in the database and
the beat task ``deliver_pending`` picks them up later. (Budget evaluation tasks live with the
rules they run, in ``budgets.tasks``.)
"""

from __future__ import annotations

from celery import shared_task

from governance import queue
from governance.notify.services import (
    DELIVER,
    enqueue_deliveries,
    notification_deliver,
    notifications_due_claim,
)


@shared_task(ignore_result=True)
def deliver_notification(notification_id: int) -> None:
    outcome = notification_deliver(notification_id=notification_id)
    if outcome.retry_in is not None:
        queue.enqueue(DELIVER, [notification_id], countdown=outcome.retry_in)


@shared_task(ignore_result=True)
def deliver_pending() -> None:
    """Re-enqueue deliveries whose task was lost (broker down, worker died)."""
    enqueue_deliveries(notifications_due_claim())
