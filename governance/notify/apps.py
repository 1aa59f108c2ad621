from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "governance.notify"
    label = "notify"
    verbose_name = "Alerts and notifications"
