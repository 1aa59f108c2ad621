"""Prices, the usage ledger and its daily rollups."""

from __future__ import annotations

import uuid

from django.db import models

from governance.models import ApiKey, Feature, Tenant

# Money is stored as integer nano-USD (1e-9 USD): $0.025/MTok is 25 nano-USD per
# thousand tokens, and a tenant can spend $9.2 billion before a column overflows.
NANO = 1_000_000_000


class ServiceTier(models.TextChoices):
    STANDARD = "standard", "Standard"
    BATCH = "batch", "Batch"
    PRIORITY = "priority", "Priority"


class Speed(models.TextChoices):
    STANDARD = "standard", "Standard"
    FAST = "fast", "Fast mode"


# A family is a word of the catalog (opus, sonnet, haiku, fable, mythos …), not a closed list:
# ``usage.pricing.known_families()`` says which ones exist.
FAMILY_MAX_LENGTH = 40


def price_field(help_text: str) -> models.DecimalField:
    return models.DecimalField(max_digits=12, decimal_places=6, help_text=help_text)


class ModelPrice(models.Model):
    """One model's prices from ``effective_from`` on, USD per million tokens."""

    model = models.CharField(max_length=100, help_text="Canonical API id, e.g. claude-sonnet-4-5-20250929.")
    aliases = models.JSONField(default=list, blank=True, help_text="Other ids that name this model.")
    display_name = models.CharField(max_length=100)
    family = models.CharField(max_length=FAMILY_MAX_LENGTH, help_text="Catalog family: opus, sonnet, haiku, fable …")
    generation = models.DecimalField(
        max_digits=5, decimal_places=2, help_text="Version number, for 'one tier down' (4.5, 5 …)."
    )
    retired = models.BooleanField(default=False)
    retired_on = models.DateField(
        null=True, blank=True, help_text="Retirement date, past or announced (history stays priced)."
    )
    service_tier = models.CharField(
        max_length=10,
        blank=True,
        choices=ServiceTier.choices,
        help_text="Blank: every tier (batch via batch factor). Set 'priority' to price priority apart.",
    )
    effective_from = models.DateTimeField()
    input = price_field("Uncached input, USD per MTok")
    cache_write_5m = price_field("5-minute cache write, USD per MTok")
    cache_write_1h = price_field("1-hour cache write, USD per MTok")
    cache_read = price_field("Cache read, USD per MTok")
    output = price_field("Output, USD per MTok")
    batch_factor = models.DecimalField(max_digits=5, decimal_places=4, default=0.5)
    long_context_threshold = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Prompt tokens (input + cache writes + reads) above which the lc_* band applies to the whole request.",
    )
    lc_input = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    lc_cache_write_5m = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    lc_cache_write_1h = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    lc_cache_read = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    lc_output = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    geo_us_factor = models.DecimalField(
        max_digits=5, decimal_places=4, default=1, help_text="Multiplier for inference_geo='us'."
    )
    fast_factor = models.DecimalField(
        max_digits=6, decimal_places=4, null=True, blank=True,
        help_text="Multiplier for speed='fast' (blank: no fast mode). Stacks with cache prices and geo, not batch.",
    )
    web_search_per_request = models.DecimalField(max_digits=10, decimal_places=6, default=0.01)
    source = models.CharField(max_length=300, blank=True, help_text="URL of the page the rates were read from.")
    catalog_version = models.CharField(
        max_length=40, blank=True, help_text="Version of the catalog file that last wrote this row (blank: by hand)."
    )

    class Meta:
        ordering = ["family", "-generation", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "service_tier", "effective_from"], name="model_price_unique"
            )
        ]

    def __str__(self) -> str:
        tier = f" [{self.service_tier}]" if self.service_tier else ""
        return f"{self.model}{tier} from {self.effective_from:%Y-%m-%d}"


class UsageSource(models.TextChoices):
    COMMIT = "commit", "Commit of a hold"
    REPORT = "report", "Reported without a hold"


class UsageEvent(models.Model):
    """The ledger: one row per model call, token counts exactly as Anthropic reports them."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: (tenant, occurred_at) serves every lookup by tenant.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_events", db_index=False)
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="usage_events")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    run_id = models.CharField(max_length=200, blank=True)
    request_id = models.CharField(max_length=255, blank=True)
    model = models.CharField(max_length=100)
    family = models.CharField(max_length=FAMILY_MAX_LENGTH, blank=True)
    service_tier = models.CharField(max_length=10, choices=ServiceTier.choices, default=ServiceTier.STANDARD)
    inference_geo = models.CharField(max_length=20, blank=True)
    speed = models.CharField(max_length=10, choices=Speed.choices, default=Speed.STANDARD)
    input_tokens = models.BigIntegerField(default=0, help_text="Uncached input")
    output_tokens = models.BigIntegerField(default=0)
    cache_write_5m_tokens = models.BigIntegerField(default=0)
    cache_write_1h_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    web_search_requests = models.BigIntegerField(default=0)
    cost_nano = models.BigIntegerField()
    priced = models.BooleanField(
        default=True, help_text="False: no price was known for the model; cost is 0 or the hold model's price."
    )
    off_hold = models.BooleanField(
        default=False, help_text="Spend no hold covered that took an enforcing budget past its limit."
    )
    body_hash = models.CharField(
        max_length=64, blank=True, help_text="Hash of the reported body: a repeat must match it (else 409)."
    )
    max_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="max_tokens the call carried")
    stop_reason = models.CharField(max_length=40, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    streamed = models.BooleanField(null=True, blank=True)
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=10, choices=UsageSource.choices)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-occurred_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "request_id"],
                condition=~models.Q(request_id=""),
                name="usage_event_request_unique",
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "occurred_at"]),
            # A run budget's window starts from the spend its run already has.
            models.Index(fields=["tenant", "run_id"], condition=~models.Q(run_id=""), name="usage_event_run"),
            # Spend no hold covered is rare: the web UI lists it without reading the rest of the ledger.
            models.Index(fields=["tenant", "occurred_at"], condition=models.Q(off_hold=True),
                         name="usage_event_off_hold"),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.occurred_at:%Y-%m-%d %H:%M} {self.request_id}"


# Fixed latency histogram buckets (upper bounds, ms); the last bucket is open-ended.
LATENCY_BUCKETS_MS = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 30000, 60000)
HISTOGRAM_SIZE = len(LATENCY_BUCKETS_MS) + 1


def histogram_bucket(ms: int) -> int:
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if ms <= bound:
            return i
    return len(LATENCY_BUCKETS_MS)


class UsageRollup(models.Model):
    """Per tenant × feature × model × tier × (tenant-local) day sums, kept current on write."""

    SUM_FIELDS = (
        "calls",
        "input_tokens",
        "output_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "cache_read_tokens",
        "web_search_requests",
        "cost_nano",
        "truncations",
        "max_tokens_sum",
        "max_tokens_calls",
        "output_tokens_capped",
        "latency_sum_ms",
        "latency_count",
        "ttft_sum_ms",
        "ttft_count",
        "streamed_calls",
    )

    # No index of its own: the unique key (tenant, feature, …) serves every lookup by tenant.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_rollups", db_index=False)
    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="usage_rollups")
    model = models.CharField(max_length=100)
    family = models.CharField(max_length=FAMILY_MAX_LENGTH, blank=True)
    service_tier = models.CharField(max_length=10, choices=ServiceTier.choices)
    day = models.DateField()
    calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_write_5m_tokens = models.BigIntegerField(default=0)
    cache_write_1h_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    web_search_requests = models.BigIntegerField(default=0)
    cost_nano = models.BigIntegerField(default=0)
    truncations = models.BigIntegerField(default=0, help_text="Calls that stopped at max_tokens")
    max_tokens_sum = models.BigIntegerField(default=0, help_text="Sum of max_tokens over calls that carried one")
    max_tokens_calls = models.BigIntegerField(default=0)
    output_tokens_capped = models.BigIntegerField(default=0, help_text="Output of calls that carried max_tokens")
    latency_sum_ms = models.BigIntegerField(default=0)
    latency_count = models.BigIntegerField(default=0)
    ttft_sum_ms = models.BigIntegerField(default=0)
    ttft_count = models.BigIntegerField(default=0)
    streamed_calls = models.BigIntegerField(default=0)
    latency_histogram = models.JSONField(default=list, blank=True)
    ttft_histogram = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "feature", "model", "service_tier", "day"], name="usage_rollup_unique"
            )
        ]
        indexes = [models.Index(fields=["tenant", "day"])]

    def __str__(self) -> str:
        return f"{self.tenant.slug} {self.feature.key} {self.model} {self.service_tier} {self.day}"
