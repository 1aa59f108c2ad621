"""The provider's own reports (Anthropic Usage and Cost Admin API) and their reconciliation."""

from __future__ import annotations

import uuid

from django.db import models

from governance.crypto import EncryptedTextField
from governance.models import Feature, Tenant


class ConnectionStatus(models.TextChoices):
    PENDING = "pending", "Not synced yet"
    OK = "ok", "Syncing"
    ERROR = "error", "Last sync failed; retrying"
    FAILING = "failing", "Failing: the key or configuration needs attention"


class ProviderConnection(models.Model):
    """A tenant's Anthropic organisation: its admin key and where the sync has got to."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="provider_connection")
    # Never logged, never returned by the API; only governance.crypto.mask() of it is shown.
    admin_key = EncryptedTextField(blank=True)  # blank: no usage and cost sync (a gateway-only connection)
    # The Anthropic API key the gateway (/anthropic/v1/messages) calls with; blank: no gateway.
    inference_api_key = EncryptedTextField(blank=True)
    base_url = models.URLField(
        blank=True, help_text="Blank: the ANTHROPIC_API_BASE_URL setting (https://api.anthropic.com)."
    )
    workspace_ids = models.JSONField(
        default=list, blank=True, help_text="Only sync these Anthropic workspaces; empty means all."
    )
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=10, choices=ConnectionStatus.choices, default=ConnectionStatus.PENDING)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # Cursors: the end of the last complete read; the next read starts a trailing window before
    # it. `_from` is the earliest start ever read, so reconciliation knows which days are covered.
    usage_synced_from = models.DateTimeField(null=True, blank=True)
    usage_synced_until = models.DateTimeField(null=True, blank=True)
    usage_synced_at = models.DateTimeField(null=True, blank=True)
    cost_synced_from = models.DateTimeField(null=True, blank=True)
    cost_synced_until = models.DateTimeField(null=True, blank=True)
    cost_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant__slug"]

    def __str__(self) -> str:
        return f"Anthropic connection of {self.tenant}"


class MappingKind(models.TextChoices):
    API_KEY = "api_key", "Anthropic API key"
    WORKSPACE = "workspace", "Anthropic workspace"


class ProviderFeatureMapping(models.Model):
    """Attribute the provider's usage of one Anthropic API key or workspace to a feature."""

    connection = models.ForeignKey(ProviderConnection, on_delete=models.CASCADE, related_name="mappings")
    kind = models.CharField(max_length=10, choices=MappingKind.choices)
    provider_id = models.CharField(max_length=200, help_text="apikey_… or wrkspc_…")
    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["kind", "provider_id"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "kind", "provider_id"], name="provider_mapping_unique")
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.provider_id} → {self.feature.key}"


class ProviderUsageBucket(models.Model):
    """One result row of the usage report: tokens of one hour and one combination of dimensions.

    The natural key is the bucket and every grouped dimension, a null dimension
    stored as "" so the unique constraint holds; a re-read replaces the row.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    bucket_start = models.DateTimeField()
    bucket_width = models.CharField(max_length=4, default="1h")
    model = models.CharField(max_length=100, blank=True, help_text="As the provider reports it")
    workspace_id = models.CharField(max_length=200, blank=True, help_text="Blank: the default workspace")
    api_key_id = models.CharField(max_length=200, blank=True, help_text="Blank: Console / Workbench")
    service_tier = models.CharField(max_length=20, blank=True)
    context_window = models.CharField(max_length=20, blank=True)
    inference_geo = models.CharField(max_length=20, blank=True)
    speed = models.CharField(max_length=20, blank=True, help_text="standard or fast, when grouped by speed")
    uncached_input_tokens = models.BigIntegerField(default=0)
    cache_write_5m_tokens = models.BigIntegerField(default=0)
    cache_write_1h_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    web_search_requests = models.BigIntegerField(default=0)
    canonical_model = models.CharField(max_length=100, blank=True, help_text="Our price table's id, if priced")
    # Priced by our own table; null when the model has no price.
    cost_nano = models.BigIntegerField(null=True, blank=True)
    feature = models.ForeignKey(Feature, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    synced_at = models.DateTimeField(help_text="When a sync last wrote this row (new or changed)")

    class Meta:
        ordering = ["-bucket_start", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant", "bucket_start", "bucket_width", "model", "workspace_id", "api_key_id",
                    "service_tier", "context_window", "inference_geo", "speed",
                ],
                name="provider_usage_natural_key_geo_speed",
            )
        ]
        indexes = [models.Index(fields=["tenant", "bucket_start"])]

    def __str__(self) -> str:
        return f"{self.tenant} {self.bucket_start:%Y-%m-%d %H:%M} {self.model or '-'}"


class ProviderCostBucket(models.Model):
    """One result row of the cost report: one day, one workspace, one line of the bill."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    bucket_start = models.DateTimeField()
    day = models.DateField(help_text="UTC day of the bucket")
    workspace_id = models.CharField(max_length=200, blank=True)
    description = models.CharField(max_length=300, blank=True)
    cost_type = models.CharField(max_length=40, blank=True)
    model = models.CharField(max_length=100, blank=True)
    service_tier = models.CharField(max_length=20, blank=True)
    context_window = models.CharField(max_length=20, blank=True)
    token_type = models.CharField(max_length=60, blank=True)
    inference_geo = models.CharField(max_length=20, blank=True)
    speed = models.CharField(max_length=20, blank=True)
    canonical_model = models.CharField(max_length=100, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    amount_cents = models.CharField(max_length=40, help_text="The decimal string as reported, in cents")
    amount_nano = models.BigIntegerField(help_text="The amount in nano-USD")
    synced_at = models.DateTimeField(help_text="When a sync last wrote this row (new or changed)")

    class Meta:
        ordering = ["-day", "description"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant", "bucket_start", "workspace_id", "description", "cost_type", "model",
                    "service_tier", "context_window", "token_type", "inference_geo", "speed",
                ],
                name="provider_cost_natural_key_geo_speed",
            )
        ]
        indexes = [models.Index(fields=["tenant", "day"])]

    def __str__(self) -> str:
        return f"{self.tenant} {self.day} {self.description}"


class Reconciliation(models.Model):
    """Metered spend against the provider's numbers for one tenant-local day and model."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    model = models.CharField(max_length=100, blank=True, help_text="Blank: provider cost with no model")
    metered_nano = models.BigIntegerField(default=0, help_text="The ledger's rollups")
    provider_usage_nano = models.BigIntegerField(
        null=True, blank=True, help_text="The usage report's tokens priced by our table"
    )
    provider_cost_nano = models.BigIntegerField(null=True, blank=True, help_text="The cost report")
    unpriced_tokens = models.BigIntegerField(default=0, help_text="Provider tokens of models we have no price for")
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["-day", "model"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day", "model"], name="reconciliation_unique")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.day} {self.model or '-'}"


class FeatureReconciliation(models.Model):
    """One mapped feature on one UTC day: its ledger against its API keys' and workspaces' reports.

    UTC days, because the usage buckets are hours and the cost report's days are UTC days;
    the provider figures are null when not synced (usage), or when the bill cannot be
    attributed to the feature alone (cost: no workspace of its own) or has not settled.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    day = models.DateField(help_text="UTC day")
    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="+")
    metered_nano = models.BigIntegerField(default=0, help_text="The ledger: the feature's usage events that day")
    provider_usage_nano = models.BigIntegerField(
        null=True, blank=True, help_text="The usage report of the mapped keys and workspaces, priced by our table"
    )
    unpriced_tokens = models.BigIntegerField(default=0, help_text="Mapped provider tokens of models with no price")
    bill_metered_nano = models.BigIntegerField(
        null=True, blank=True, help_text="The ledger less priority tier, once the attributable bill has settled"
    )
    provider_cost_nano = models.BigIntegerField(
        null=True, blank=True, help_text="The cost report of the feature's own workspaces"
    )
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["-day", "feature__key"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day", "feature"], name="feature_reconciliation_unique")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.day} {self.feature.key}"
