from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    verbose_name = "Budgets and holds"

    def ready(self) -> None:
        from budgets import policy  # noqa: F401  (connects the invalidation signals)
