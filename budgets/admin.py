from django.contrib import admin

from budgets.models import Budget, BudgetWindow, Hold


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "scope", "feature", "period", "limit_nano", "limit_tokens", "enforcement", "active"]
    list_filter = ["tenant", "scope", "period", "enforcement"]


@admin.register(BudgetWindow)
class BudgetWindowAdmin(admin.ModelAdmin):
    list_display = ["budget", "run_id", "start", "end", "spent_nano", "reserved_nano", "spent_tokens", "reserved_tokens"]
    list_filter = ["budget__tenant"]


@admin.register(Hold)
class HoldAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "feature", "model", "state", "amount_nano", "expires_at"]
    list_filter = ["tenant", "state"]
    raw_id_fields = ["feature", "api_key", "usage_event"]
