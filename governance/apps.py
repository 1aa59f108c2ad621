from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance"

    def ready(self) -> None:
        # Sign-in signal receivers (the one-time password check).
        from governance.web import auth  # noqa: F401
