from django import forms
from django.contrib import admin

from budgets.features import FEATURE_FIELDS, feature_models_validate
from governance.models import ApiKey, AuditEntry, Feature, Invitation, Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "timezone", "active", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


class FeatureAdminForm(forms.ModelForm):
    class Meta:
        model = Feature
        fields = ["tenant", *FEATURE_FIELDS]

    def clean(self):
        data = super().clean()
        feature_models_validate(self.instance)  # the catalog's check, as the API and the UI run it
        return data


@admin.register(Feature)
class FeatureAdmin(admin.ModelAdmin):
    form = FeatureAdminForm
    list_display = ["key", "tenant", "name", "default_model", "max_tokens_cap", "interactive", "active"]
    list_filter = ["tenant", "active", "interactive"]
    search_fields = ["key", "name"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "role", "prefix", "last_used_at", "revoked_at"]
    list_filter = ["tenant", "role"]
    readonly_fields = ["prefix", "secret_hash", "last_used_at", "created_at"]
    search_fields = ["name", "prefix"]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "tenant", "action", "object_type", "object_repr"]
    list_filter = ["tenant", "action", "object_type"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Read-only: invitations are made and revoked by tenant owners on the members page."""

    list_display = ["email", "tenant", "role", "created_at", "expires_at", "accepted_at", "revoked_at"]
    list_filter = ["tenant", "role"]
    search_fields = ["email"]
    exclude = ["token_hash"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
