"""Publishing Celery tasks without ever failing or stalling the caller.

A request thread or a commit hook calls ``enqueue``; with the broker down the work stays in
the database (alerts, pending deliveries) and the beat sweeps pick it up later. Tasks are
named, not imported, so a lower layer can ask for a task that lives above it.
"""

from __future__ import annotations

import importlib
import logging
import time

from celery import current_app
from celery.app.task import Task
from celery.exceptions import NotRegistered

logger = logging.getLogger(__name__)

# After a failed publish, skip the broker for this long: finding it down again costs
# seconds of connection attempts, and requests should not pay that on every commit.
BROKER_BACKOFF_SECONDS = 30
_broker_down_until = 0.0


def broker_backoff_reset() -> None:
    """Forget a failed publish (tests, and an operator's shell after fixing the broker)."""
    global _broker_down_until
    _broker_down_until = 0.0


def task_named(task_name: str) -> Task:
    """Return the registered task ``<module>.<function>``, importing its module on first use.

    Workers import every app's tasks at start-up; a web process registers a task only once
    its module is imported, which nothing else there may have done.
    """
    try:
        return current_app.tasks[task_name]
    except NotRegistered:
        importlib.import_module(task_name.rpartition(".")[0])
        return current_app.tasks[task_name]


def enqueue(task_name: str, args: list, *, countdown: int | None = None) -> bool:
    """Send the task named ``task_name``; return False (and log) when the broker is down.

    An unknown name raises (a bug to see, not a broker to back off from).
    """
    global _broker_down_until
    if time.monotonic() < _broker_down_until:
        return False
    task = task_named(task_name)
    try:
        # apply_async on the registered task honours task_always_eager (tests, the demo).
        # No publish retries: a request thread must not wait on a dead broker.
        task.apply_async(args=args, countdown=countdown, retry=False)
    except Exception:  # kombu raises several types for an unreachable broker
        _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
        logger.warning("broker unavailable; %s%r left for the beat sweep", task_name, args, exc_info=True)
        return False
    return True
