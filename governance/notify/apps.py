from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "governance.notify"
    label = "notify"
    verbose_name = "Alerts and notifications"

    def ready(self) -> None:
        # Connect receivers: unpriced usage raises its alert (alerts), a new alert queues its
        # deliveries (services).
        from governance.notify import alerts, services  # noqa: F401
