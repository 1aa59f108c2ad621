from django.contrib import admin

from usage.models import ModelPrice, UsageEvent, UsageRollup


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["model", "family", "service_tier", "effective_from", "input", "cache_write_5m",
                    "cache_write_1h", "cache_read", "output", "fast_factor", "geo_us_factor", "retired",
                    "catalog_version"]
    list_filter = ["family", "retired", "catalog_version"]
    search_fields = ["model", "display_name"]


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = ["occurred_at", "tenant", "feature", "model", "service_tier", "cost_nano", "source"]
    list_filter = ["tenant", "source", "service_tier"]
    search_fields = ["request_id", "run_id"]
    raw_id_fields = ["feature", "api_key"]


@admin.register(UsageRollup)
class UsageRollupAdmin(admin.ModelAdmin):
    list_display = ["day", "tenant", "feature", "model", "service_tier", "calls", "cost_nano"]
    list_filter = ["tenant", "service_tier"]
