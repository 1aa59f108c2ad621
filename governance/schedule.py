"""The one beat schedule. Every periodic task is listed here and nowhere else."""

from __future__ import annotations

from datetime import timedelta

BEAT_SCHEDULE: dict[str, dict] = {
    "expire-holds": {"task": "budgets.tasks.expire_holds", "schedule": timedelta(minutes=1)},
}
