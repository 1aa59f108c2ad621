from __future__ import annotations

from celery import shared_task

from budgets import services


@shared_task
def expire_holds() -> int:
    """Release holds past their expiry (beat, every minute)."""
    return services.holds_expire()
