from django.apps import AppConfig


class ProviderConfig(AppConfig):
    name = "usage.provider"
    # A label of its own, so these migrations never collide with the usage app's.
    label = "provider"
    verbose_name = "Provider sync (Anthropic Usage and Cost API)"
