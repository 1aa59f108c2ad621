from django.contrib import admin

from governance.crypto import mask
from usage.provider.models import (
    FeatureReconciliation,
    ProviderConnection,
    ProviderCostBucket,
    ProviderFeatureMapping,
    ProviderUsageBucket,
    Reconciliation,
)


class MappingInline(admin.TabularInline):
    model = ProviderFeatureMapping
    extra = 0
    raw_id_fields = ["feature"]


@admin.register(ProviderConnection)
class ProviderConnectionAdmin(admin.ModelAdmin):
    list_display = ["tenant", "masked_key", "status", "enabled", "usage_synced_until", "cost_synced_until"]
    list_filter = ["status", "enabled"]
    # The key is write-only here too: the change form never renders the stored secret.
    exclude = ["admin_key"]
    readonly_fields = [
        "masked_key", "status", "last_error", "last_error_at", "last_attempt_at", "usage_synced_from",
        "usage_synced_until", "usage_synced_at", "cost_synced_from", "cost_synced_until", "cost_synced_at",
    ]
    inlines = [MappingInline]

    @admin.display(description="Admin key")
    def masked_key(self, obj: ProviderConnection) -> str:
        return mask(obj.admin_key)

    def has_add_permission(self, request) -> bool:
        # Created through the API or the settings page, which take the key.
        return False


@admin.register(ProviderUsageBucket)
class ProviderUsageBucketAdmin(admin.ModelAdmin):
    list_display = ["bucket_start", "tenant", "model", "workspace_id", "api_key_id", "service_tier",
                    "output_tokens", "cost_nano"]
    list_filter = ["tenant", "service_tier"]
    search_fields = ["model", "workspace_id", "api_key_id"]
    raw_id_fields = ["feature"]


@admin.register(ProviderCostBucket)
class ProviderCostBucketAdmin(admin.ModelAdmin):
    list_display = ["day", "tenant", "description", "workspace_id", "amount_cents", "amount_nano"]
    list_filter = ["tenant"]
    search_fields = ["description", "model"]


@admin.register(Reconciliation)
class ReconciliationAdmin(admin.ModelAdmin):
    list_display = ["day", "tenant", "model", "metered_nano", "provider_usage_nano", "provider_cost_nano"]
    list_filter = ["tenant"]


@admin.register(FeatureReconciliation)
class FeatureReconciliationAdmin(admin.ModelAdmin):
    list_display = ["day", "tenant", "feature", "metered_nano", "provider_usage_nano", "provider_cost_nano"]
    list_filter = ["tenant"]
    raw_id_fields = ["feature"]
