"""Web UI routes: sign-in and account pages, then every tenant page under /t/<slug>/."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from governance.web import auth, sso
from governance.web.views import (
    account,
    alerts,
    budgets,
    dashboard,
    features,
    invitations,
    keys,
    levers,
    members,
    provider,
    usage,
)


class HexIdConverter:
    """A UUID written as 32 hex digits, the form alert emails link to."""

    regex = "[0-9a-f]{32}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value) -> str:
        return value.hex if hasattr(value, "hex") else str(value)


register_converter(HexIdConverter, "hex")

tenant_patterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("usage/", usage.usage_explorer, name="usage"),
    path("levers/", levers.levers, name="levers"),
    path("alerts/", alerts.alert_index, name="alerts"),
    path("alerts/channels/new/", alerts.channel_create, name="channel-create"),
    path("alerts/channels/<hex:channel_hex>/", alerts.channel_detail, name="channel"),
    path("alerts/channels/<hex:channel_hex>/edit/", alerts.channel_edit, name="channel-edit"),
    path("alerts/channels/<hex:channel_hex>/test/", alerts.channel_test, name="channel-test"),
    path("alerts/channels/<hex:channel_hex>/delete/", alerts.channel_delete, name="channel-delete"),
    path("provider/", provider.provider, name="provider"),
    path("provider/save/", provider.provider_save, name="provider-save"),
    path("provider/delete/", provider.provider_delete, name="provider-delete"),
    path("provider/test/", provider.provider_test, name="provider-test"),
    path("provider/mapping/", provider.provider_mapping, name="provider-mapping"),
    path("features/", features.feature_list, name="features"),
    path("features/new/", features.feature_create, name="feature-create"),
    path("features/<slug:key>/", features.feature_edit, name="feature-edit"),
    path("features/<slug:key>/delete/", features.feature_delete, name="feature-delete"),
    path("budgets/", budgets.budget_index, name="budgets"),
    path("budgets/new/", budgets.budget_create, name="budget-create"),
    path("budgets/<hex:budget_hex>/", budgets.budget_detail, name="budget"),
    path("budgets/<hex:budget_hex>/edit/", budgets.budget_edit, name="budget-edit"),
    path("budgets/<hex:budget_hex>/delete/", budgets.budget_delete, name="budget-delete"),
    path("keys/", keys.key_list, name="keys"),
    path("keys/new/", keys.key_create, name="key-create"),
    path("keys/<hex:key_hex>/created/", keys.key_created, name="key-created"),
    path("keys/<hex:key_hex>/revoke/", keys.key_revoke, name="key-revoke"),
    path("members/", members.member_list, name="members"),
    path("members/add/", members.member_add, name="member-add"),
    path("members/<int:member_id>/role/", members.member_role, name="member-role"),
    path("members/<int:member_id>/remove/", members.member_remove, name="member-remove"),
    path("members/invitations/<hex:invitation_hex>/revoke/", members.invitation_revoke, name="invitation-revoke"),
]

urlpatterns = [
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/password/", auth.PasswordChangeView.as_view(), name="password_change"),
    path("account/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("invitations/<str:token>/", invitations.invitation, name="invitation"),
    path("oidc/authenticate/", sso.SsoStartView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", sso.SsoCallbackView.as_view(), name="oidc_authentication_callback"),
    # Named "dashboard" because LOGIN_REDIRECT_URL says so; it leads to a tenant's dashboard.
    path("", account.home, name="dashboard"),
    path("t/<slug:slug>/", include((tenant_patterns, "web"))),
]
