from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    verbose_name = "Budgets and holds"

    def ready(self) -> None:
        # Connect receivers: the policy cache's invalidation, and the alert layer's ear for
        # what the budget services announce (budgets.signals).
        from budgets import alerting, policy  # noqa: F401
