"""The one beat schedule. Every periodic task is listed here and nowhere else."""

from __future__ import annotations

from datetime import timedelta

BEAT_SCHEDULE: dict[str, dict] = {
    "expire-holds": {"task": "budgets.tasks.expire_holds", "schedule": timedelta(minutes=1)},
    "evaluate-budgets": {"task": "budgets.tasks.evaluate_budgets", "schedule": timedelta(minutes=1)},
    "deliver-pending-notifications": {
        "task": "governance.notify.tasks.deliver_pending", "schedule": timedelta(minutes=1),
    },
    "provider-sync-usage": {"task": "usage.provider.tasks.sync_usage_all", "schedule": timedelta(minutes=5)},
    "provider-sync-cost": {"task": "usage.provider.tasks.sync_cost_all", "schedule": timedelta(hours=1)},
    "provider-reconcile": {"task": "usage.provider.tasks.reconcile_all", "schedule": timedelta(hours=1)},
}
