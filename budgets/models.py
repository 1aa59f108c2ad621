"""Budgets, their per-period windows, and holds (reservations) against them."""

from __future__ import annotations

import uuid

from django.db import models

from governance.models import ApiKey, Feature, Tenant
from usage.models import ServiceTier, Speed, UsageEvent


class Scope(models.TextChoices):
    TENANT = "tenant", "Whole tenant"
    FEATURE = "feature", "One feature"
    RUN = "run", "Each agent run"


class Period(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week (from Monday)"
    MONTH = "month", "Month"
    TOTAL = "total", "Total (never resets)"


class Enforcement(models.TextChoices):
    BLOCK = "block", "Block: deny calls that do not fit"
    DOWNGRADE = "downgrade", "Downgrade: route to a cheaper fallback model"
    ALERT = "alert", "Alert only: never deny"


def default_thresholds() -> list[int]:
    return [50, 80, 100]


class Budget(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=200)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    feature = models.ForeignKey(
        Feature, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
        help_text="Required for feature budgets; optional for run budgets.",
    )
    model_families = models.JSONField(default=list, blank=True, help_text="Empty: every model.")
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.MONTH)
    limit_nano = models.BigIntegerField(null=True, blank=True, help_text="USD limit in nano-USD")
    limit_tokens = models.BigIntegerField(null=True, blank=True)
    enforcement = models.CharField(max_length=10, choices=Enforcement.choices, default=Enforcement.BLOCK)
    thresholds = models.JSONField(default=default_thresholds, blank=True)
    forecast_alert = models.BooleanField(default=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(limit_nano__isnull=False) | models.Q(limit_tokens__isnull=False),
                name="budget_has_a_limit",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def applies_to(self, *, feature: Feature, family: str | None, run_id: str) -> bool:
        """Return whether a call of this feature, model family and run counts against this budget."""
        if not self.active:
            return False
        if self.model_families and family not in self.model_families:
            return False
        if self.scope == Scope.FEATURE:
            return self.feature_id == feature.pk
        if self.scope == Scope.RUN:
            return bool(run_id) and (self.feature_id is None or self.feature_id == feature.pk)
        return True


class BudgetWindow(models.Model):
    """One budget's counters for one period (or one run). Past windows are history."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="windows")
    run_id = models.CharField(max_length=200, blank=True)
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True, help_text="Open for total and run budgets")
    spent_nano = models.BigIntegerField(default=0)
    reserved_nano = models.BigIntegerField(default=0)
    spent_tokens = models.BigIntegerField(default=0)
    reserved_tokens = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-start"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "start", "run_id"], name="budget_window_unique")
        ]

    def __str__(self) -> str:
        run = f" run {self.run_id}" if self.run_id else ""
        return f"{self.budget} from {self.start:%Y-%m-%d}{run}"


class HoldState(models.TextChoices):
    HELD = "held", "Held"
    COMMITTED = "committed", "Committed"
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"
    DENIED = "denied", "Denied (kept only to answer idempotent repeats)"


class Hold(models.Model):
    """A reservation of a call's worst-case cost on every window that applies to it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="holds")
    # Holds are read by id, by (tenant, idempotency key) and, while live, by expiry; never by
    # feature or key. Every index costs each allowance's insert and each commit's update, so
    # those two foreign keys have none (deleting an unused feature scans the table once).
    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="holds", db_index=False)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    run_id = models.CharField(max_length=200, blank=True)
    requested_model = models.CharField(max_length=100)
    model = models.CharField(max_length=100, help_text="The model granted (a fallback when downgraded)")
    decision = models.CharField(max_length=12)
    max_tokens = models.PositiveIntegerField()
    clamped = models.BooleanField(default=False)
    service_tier = models.CharField(max_length=10, choices=ServiceTier.choices, default=ServiceTier.STANDARD)
    inference_geo = models.CharField(max_length=20, default="global", help_text="global or us (1.1x on newer models)")
    speed = models.CharField(max_length=10, choices=Speed.choices, default=Speed.STANDARD)
    max_web_searches = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    cache_read_tokens = models.PositiveIntegerField(default=0, help_text="Declared part of input_tokens read from cache")
    amount_nano = models.BigIntegerField()
    tokens = models.BigIntegerField()
    window_ids = models.JSONField(default=list, help_text="Windows this hold reserved on")
    charged_window_ids = models.JSONField(
        default=list, blank=True, help_text="Windows its commit was charged to (those of the model committed)"
    )
    state = models.CharField(max_length=10, choices=HoldState.choices, default=HoldState.HELD)
    expires_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_hash = models.CharField(max_length=64, blank=True)
    commit_hash = models.CharField(max_length=64, blank=True)
    late = models.BooleanField(default=False)
    usage_event = models.OneToOneField(
        UsageEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="hold"
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="hold_idempotency_unique",
            )
        ]
        # The expiry sweep's: only live holds, so it stays small and a commit leaves it alone.
        indexes = [models.Index(fields=["expires_at"], condition=models.Q(state=HoldState.HELD), name="hold_live_expiry")]

    def __str__(self) -> str:
        return f"hold {self.pk.hex[:8]} {self.model} {self.state}"
